from __future__ import annotations

from typing import Iterator

import pytest

from dbservers import mariadb_server, postgres_server, redis_cluster_server, redis_server  # noqa: F401  (session fixtures)
from otlp_receiver import OTLPReceiver


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A fresh OTLP/gRPC + OTLP/HTTP receiver on loopback, stopped after the test."""
    with OTLPReceiver() as receiver:
        yield receiver
