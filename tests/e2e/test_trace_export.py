"""A Rabbitry process sends its traces to a collector over OTLP when the OTEL_* variables say
where: ``rabbitry serve events`` exporting to a small OTLP/HTTP receiver run by the test."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from helpers import RABBITRY, free_port, wait_until

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Collector(ThreadingHTTPServer):
    """Takes OTLP/HTTP trace exports and keeps (service name, span name, trace id, parent)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: list[tuple[str, str, str, str]] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        self.server.paths.append(self.path)
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(
                        (service, span.name, span.trace_id.hex(), span.parent_span_id.hex())
                    )
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("_broker_cleanup")
def test_a_served_request_is_exported_over_otlp_in_its_callers_trace(
    tmp_path: Path, namespace: str, collector: Collector
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(tmp_path / "var"),
        "RABBITRY_ADMIN_TOKEN": "test-admin-token-16",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    env.pop("OTEL_SERVICE_NAME", None)
    env.pop("OTEL_TRACES_EXPORTER", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [RABBITRY, "serve", "events", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/livez").status_code == 200, what="/livez")
        response = httpx.get(f"{base}/api/events/App%5COrder/1", headers={"traceparent": CALLER})
        assert response.status_code == 401
        wanted = (
            "rabbitry-events",
            "GET /api/events/{entity}/{entity_id}",
            CALLER[3:35],
            CALLER[36:52],
        )
        wait_until(lambda: wanted in collector.spans, timeout=60, what="the exported span")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    assert code == 0, log_path.read_text()
    assert set(collector.paths) == {"/v1/traces"}
