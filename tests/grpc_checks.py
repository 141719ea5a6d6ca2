"""What the gRPC tests share (tests/test_grpc_sync.py, tests/test_grpc_aio.py)."""

from __future__ import annotations

import time


class Serializer:
    """A response serializer that fails for responses starting with ``bad``; notes when it ran."""

    def __init__(self) -> None:
        self.ran_at: list[int] = []

    def __call__(self, response: bytes) -> bytes:
        self.ran_at.append(time.time_ns())
        if response.startswith(b"bad"):
            raise ValueError("cannot serialize")
        return response
