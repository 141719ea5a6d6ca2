"""A real ``autotrace view`` process for integration tests, on free loopback ports."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent import AUTOTRACE, Watched, clean_env
from ports import free_port


class Viewer:
    """``autotrace view`` started with ``args`` (``--memory`` unless a ``--db`` is given).

    Use it as a context manager: the process is stopped (SIGTERM, then SIGKILL) at the end.
    """

    def __init__(self, cwd: Path, *args: str, ports: tuple[int, int, int] | None = None) -> None:
        self.ui_port, self.http_port, self.grpc_port = ports or (free_port(), free_port(), free_port())
        store = () if "--db" in args or "--memory" in args else ("--memory",)
        self.args = [
            AUTOTRACE, "view", "--ui-port", str(self.ui_port), "--otlp-http-port", str(self.http_port),
            "--otlp-grpc-port", str(self.grpc_port), *store, *args,
        ]
        self.process = Watched(self.args, cwd, clean_env())
        try:
            self.process.wait_for_line("autotrace view: UI at", timeout=30)
        except BaseException:
            self.process.stop()
            raise

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    @property
    def otlp_http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def agent_env(self, protocol: str = "http/protobuf", **extra: str) -> dict[str, str]:
        """The environment of an ``autotrace run`` exporting to this viewer, spans sent at once."""
        endpoint = self.otlp_http if protocol != "grpc" else f"http://127.0.0.1:{self.grpc_port}"
        return clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_BSP_SCHEDULE_DELAY="50",
            **extra,
        )

    def get(self, path: str, status: int = 200) -> dict:
        try:
            with urllib.request.urlopen(self.ui + path, timeout=10) as response:
                code, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            code, body = exc.code, exc.read()
        assert code == status, (path, code, body[:500])
        return json.loads(body)

    def post(self, body: bytes, content_type: str = "application/json", **headers: str) -> int:
        request = urllib.request.Request(
            self.otlp_http + "/v1/traces", data=body, method="POST", headers={"Content-Type": content_type, **headers}
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def wait_for_trace(self, query: str, count: int = 1, timeout: float = 20) -> list[dict]:
        """Wait until ``/api/traces?{query}`` finds ``count`` traces (bounded); return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.get(f"/api/traces?{query}")["data"]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def __enter__(self) -> "Viewer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.stop()
