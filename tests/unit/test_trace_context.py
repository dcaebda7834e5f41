"""Tracing without a broker: which OTEL_* settings turn export on, the W3C context a message
carries, and the HTTP server spans of the ASGI middleware (on a small app, in process)."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from helpers import RABBITRY
from rabbitry import Message
from rabbitry.app.telemetry import configure_tracing, wanted_exporter
from rabbitry.app.tracing import TraceRequests
from rabbitry.errors import ConfigError
from rabbitry.messaging.tracing import active_tracer, carrying, context_of

REMOTE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "shop"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_traces_are_exported_only_when_the_environment_asks(
    environ: dict[str, str], exporter: str | None
) -> None:
    assert wanted_exporter(environ) == exporter


def test_an_exporter_rabbitry_cannot_set_up_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin' is not supported"):
        wanted_exporter({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_without_otel_variables_no_tracer_provider_is_installed() -> None:
    assert configure_tracing({}, "rabbitry") is None
    assert active_tracer() is None


def test_a_bad_exporter_stops_a_process_before_it_starts_with_one_line_and_code_2() -> None:
    done = subprocess.run(
        [RABBITRY, "worker", "workflow"],
        env={"OTEL_TRACES_EXPORTER": "zipkin", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "rabbitry: error: OTEL_TRACES_EXPORTER='zipkin' is not supported: "
        "use one of otlp, console, none"
    ]


def test_a_message_carries_the_current_span_context_and_gives_it_back() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("send") as span:
        sent = carrying(Message("t", {}))
    assert sent.traceparent is not None
    carried = trace.get_current_span(context_of(sent)).get_span_context()
    assert carried.trace_id == span.get_span_context().trace_id
    assert carried.span_id == span.get_span_context().span_id
    assert carried.is_remote


def test_outside_any_span_a_message_is_left_as_it_is() -> None:
    message = Message("t", {})
    assert carrying(message) is message


def test_tracestate_travels_beside_traceparent() -> None:
    received = Message("t", {}, traceparent=REMOTE, extra={"tracestate": b"shop=1"})
    context = trace.get_current_span(context_of(received)).get_span_context()
    assert f"{context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert context.trace_state.get("shop") == "1"
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("again", context=context_of(received)):
        forwarded = carrying(Message("t", {}))
    assert forwarded.extra == {"tracestate": "shop=1"}
    with tracer.start_as_current_span("a trace of its own"):
        republished = carrying(received)
    assert republished.traceparent != REMOTE
    assert "tracestate" not in republished.extra  # it belonged to the old traceparent


def small_app() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> JSONResponse:
        if item_id == 0:
            return JSONResponse({"error": "broken"}, status_code=500)
        return JSONResponse({"id": item_id})

    app.add_middleware(TraceRequests)
    return app


async def test_a_request_is_a_server_span_named_by_its_route_that_continues_the_caller(
    global_spans: InMemorySpanExporter,
) -> None:
    transport = httpx.ASGITransport(app=small_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        assert (await client.get("/items/7?full=1", headers={"traceparent": REMOTE})).is_success
        assert (await client.get("/items/0")).status_code == 500
        assert (await client.get("/nowhere")).status_code == 404

    ok, failed, unknown = global_spans.get_finished_spans()
    assert ok.name == "GET /items/{item_id}" and ok.kind is SpanKind.SERVER
    assert ok.context is not None and ok.parent is not None
    assert f"{ok.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{ok.parent.span_id:016x}" == "b7ad6b7169203331"
    assert dict(ok.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/items/7",
        "url.query": "full=1",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "server.address": "shop",
        "client.address": "127.0.0.1",
        "user_agent.original": f"python-httpx/{httpx.__version__}",
        "http.response.status_code": 200,
        "http.route": "/items/{item_id}",
    }
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.parent is None  # no traceparent: a trace of its own
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "500"
    assert unknown.name == "GET"  # no route matched: no template to name it by
    assert (unknown.attributes or {})["http.response.status_code"] == 404
