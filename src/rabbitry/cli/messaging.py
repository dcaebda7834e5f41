"""``rabbitry publish``, ``rabbitry consume`` and ``rabbitry topology declare``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from rabbitry.app.operations import consume_printing, declare_system, publish_one
from rabbitry.console import fail, run, settings
from rabbitry.messaging import Message
from rabbitry.messaging.topology import check_name, check_routing_key

topology_app = typer.Typer(help="Declare the broker objects Rabbitry uses.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("consume")(consume)
    app.add_typer(topology_app, name="topology")


def publish(
    ctx: typer.Context,
    body: Annotated[str, typer.Argument(help="The payload: JSON text, e.g. '{\"to\": 1}'.")],
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="Exchange ('' = default).")],
    routing_key: Annotated[str, typer.Option("--routing-key", "-k", help="Routing key.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Message type (rr_job).")],
    tenant: Annotated[str | None, typer.Option(help="Tenant header.")] = None,
    pipeline: Annotated[str, typer.Option(help="RoadRunner pipeline (rr_pipeline).")] = "",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="User header NAME=VALUE (repeat).")
    ] = None,
) -> None:
    """Publish one message in Rabbitry's format; print its id and outcome as JSON.

    The outcome is "published" (the broker confirmed it) or "persisted" (the broker could not
    take it, so the outbox stored it for `rabbitry requeue`).

    Example: rabbitry publish -e rabbitry.modules -k billing.invoice -t invoice.created '{"id": 7}'
    """
    try:
        check_name(exchange, "exchange", allow_empty=True)
        check_routing_key(routing_key)
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        fail(f"BODY is not JSON: {exc}")
    except ValueError as exc:
        fail(str(exc))
    if not type_.strip():
        fail("--type must not be empty")
    headers: dict[str, tuple[str, ...]] = {}
    for item in header or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"--header {item!r}: expected NAME=VALUE")
        headers[name] = (*headers.get(name, ()), value)
    message = Message(
        type=type_, payload=payload, headers=headers, tenant=tenant, pipeline=pipeline
    )
    result = run(publish_one(settings(ctx), message, exchange, routing_key))
    print(
        json.dumps({"id": result.message_id, "status": result.status.value, "error": result.error})
    )
    if not result.ok and result.status.value == "failed":
        raise typer.Exit(1)


def consume(
    ctx: typer.Context,
    queue: Annotated[str, typer.Argument(help="Queue to read, e.g. rabbitry.module.workflow.")],
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Stop after N messages.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.1, help="Stop after this many idle seconds.")
    ] = None,
) -> None:
    """Print decoded messages as JSON lines (type, id, payload, headers).

    Each message is acked after it is printed. A malformed one goes to the queue's dead-letter
    queue with the reason. Example: rabbitry consume rabbitry.module.workflow --count 10
    """
    try:
        check_name(queue, "queue")
    except ValueError as exc:
        fail(str(exc))

    def emit(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    run(consume_printing(settings(ctx), queue, emit, count=count, idle_timeout=timeout))


@topology_app.command("declare")
def declare(
    ctx: typer.Context,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Also declare this tenant's queue.")
    ] = None,
) -> None:
    """Declare every exchange and queue (with dead-letter and retry queues). Idempotent."""
    names = run(declare_system(settings(ctx), tenant or []))
    print(f"declared {names.exchanges} exchanges, {names.queues} queues, {names.bindings} bindings")
