"""One trace across the whole removal of a user: ``DELETE /api/tenants/{t}/users/{id}`` →
USER's publishes → DISPATCH's consume → its calls to SESSION (and SESSION answering them) →
the change event → the workflow storing it. The system's parts are traced through the global
tracer provider, as ``rabbitry up`` sets it; here it is the SDK's, with an in-memory exporter.

USER, SESSION, DISPATCH and the workflow run in one app served by uvicorn on a local port,
because DISPATCH calls SESSION over real HTTP, against the real RabbitMQ.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import BrokerProbe
from fixtures.sessions import admin, bearer, delete_redis_keys, sessions_settings_for
from helpers import eventually_true, free_port, serving_on
from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers
from rabbitry.config import Settings

SESSIONS = 2


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """USER + SESSION routers, DISPATCH and the workflow, on a real port."""
    app = create_app(
        settings,
        routers=[r for name in ("user", "session") for r in servers()[name]],
        workers=("dispatch", "workflow"),
        lifespans=lifespans("user"),
    )
    port = int(str(settings.session_url).rsplit(":", 1)[1])
    async with (
        serving_on(app, port),
        httpx.AsyncClient(base_url=str(settings.session_url), timeout=30) as client,
    ):
        yield client


@pytest.fixture
async def removal_settings(
    namespace: str, tmp_path: Path, broker: BrokerProbe
) -> AsyncIterator[Settings]:
    settings = sessions_settings_for(
        namespace,
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        None,
        session_url=f"http://127.0.0.1:{free_port()}",
        # The seed's path, one DELETE per session, so that the trace shows each call and its
        # answer (DISPATCH would otherwise find SESSION's batch call and make one).
        dispatch_batch=False,
    )
    try:
        yield settings
    finally:
        await delete_redis_keys(namespace)


def in_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id
    ]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_one_trace_spans_a_removal_from_the_http_request_to_the_stored_event(
    removal_settings: Settings, global_spans: InMemorySpanExporter
) -> None:
    exporter = global_spans
    ns = removal_settings.namespace
    async with serving(removal_settings) as client:
        made = await client.post("/api/tenants", json={"name": "acme"}, headers=admin())
        assert made.status_code == 201, made.text
        user = await client.post(
            "/api/tenants/acme/users", json={"username": "ann", "password": "pw"}, headers=admin()
        )
        assert user.status_code == 201, user.text
        user_id = user.json()["id"]
        tokens = []
        for _ in range(SESSIONS):
            login = await client.post(
                "/api/tenants/acme/sessions", json={"username": "ann", "password": "pw"}
            )
            assert login.status_code == 201, login.text
            tokens.append(login.json()["token"])

        removed = await client.delete(f"/api/tenants/acme/users/{user_id}", headers=admin())
        assert removed.status_code == 202, removed.text
        (request,) = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "DELETE /api/tenants/{tenant}/users/{user_id}"
        ]
        assert request.context is not None
        trace_id = request.context.trace_id
        removal_queue = f"{ns}.tenant.acme.removals"

        async def complete() -> bool:
            names = [s.name for s in in_trace(exporter, trace_id)]
            return (
                names.count("DELETE /api/tenants/{tenant}/sessions/{session_id}") == 2 * SESSIONS
                and f"process {removal_queue}" in names
                and f"process {ns}.event-sourcing.p0" in names
            )

        await eventually_true(complete, timeout=60, what="the removal's spans")
        for token in tokens:  # what the trace shows did happen
            me = await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
            assert me.status_code == 401

    spans = in_trace(exporter, trace_id)
    by_id = {span_id(s): s for s in spans}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        return by_id[span.parent.span_id]

    def one(name: str, kind: SpanKind) -> ReadableSpan:
        (found,) = [s for s in spans if s.name == name and s.kind is kind]
        return found

    # The HTTP request: a root server span named after its route template.
    assert request.kind is SpanKind.SERVER and request.parent is None
    attributes = dict(request.attributes or {})
    assert attributes["http.route"] == "/api/tenants/{tenant}/users/{user_id}"
    assert attributes["http.request.method"] == "DELETE"
    assert attributes["http.response.status_code"] == 202
    assert attributes["url.path"] == f"/api/tenants/acme/users/{user_id}"

    # USER publishes the removal request and the change event inside it.
    request_publish = one(f"publish {ns}.tenants", SpanKind.PRODUCER)
    event_publish = one(f"publish {ns}.events", SpanKind.PRODUCER)
    assert parent(request_publish) is request and parent(event_publish) is request
    attributes = dict(request_publish.attributes or {})
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.destination.name"] == f"{ns}.tenants"
    assert attributes["messaging.rabbitmq.destination.routing_key"] == "acme.session-removal"
    assert attributes["messaging.operation.type"] == "send"
    assert attributes["rabbitry.message.type"] == "session-removal"
    assert attributes["rabbitry.tenant"] == "acme"
    assert attributes["rabbitry.publish.status"] == "published"
    assert (event_publish.attributes or {})["messaging.rabbitmq.destination.routing_key"] == (
        "delete"
    )

    # DISPATCH consumes the request in a child of its publish ...
    dispatch = one(f"process {removal_queue}", SpanKind.CONSUMER)
    assert parent(dispatch) is request_publish
    attributes = dict(dispatch.attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == f"{ns}.tenants"
    assert attributes["messaging.destination.subscription.name"] == removal_queue
    assert (
        attributes["messaging.message.id"]
        == dict(request_publish.attributes or {})["messaging.message.id"]
    )
    assert dispatch.status.status_code is StatusCode.UNSET

    # ... and calls SESSION once per session; SESSION's server spans continue each call.
    template = "DELETE /api/tenants/{tenant}/sessions/{session_id}"
    calls = [s for s in spans if s.name == template and s.kind is SpanKind.CLIENT]
    answers = [s for s in spans if s.name == template and s.kind is SpanKind.SERVER]
    assert len(calls) == len(answers) == SESSIONS
    for call in calls:
        assert parent(call) is dispatch
        assert (call.attributes or {})["http.response.status_code"] == 200
    assert {span_id(parent(answer)) for answer in answers} == {span_id(c) for c in calls}
    for answer in answers:
        assert (answer.attributes or {})[
            "http.route"
        ] == "/api/tenants/{tenant}/sessions/{session_id}"

    # The workflow stores the change event in a child of the event's publish.
    store = one(f"process {ns}.event-sourcing.p0", SpanKind.CONSUMER)
    assert parent(store) is event_publish
    assert (store.attributes or {})["rabbitry.message.type"] == "delete"
    assert store.status.status_code is StatusCode.UNSET
