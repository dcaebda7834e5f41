"""``rabbitry publish``, ``rabbitry consume``, ``rabbitry topology declare`` and ``rabbitry
topology asyncapi``.

Each command imports what it runs in its body: the module is read for every ``rabbitry``
command (and its ``--help``), which must not wait for the broker client and the parts.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from rabbitry.console import fail, run, settings, text

topology_app = typer.Typer(
    help="The broker objects Rabbitry uses: declare them, or describe them (AsyncAPI).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("consume")(consume)
    app.add_typer(topology_app, name="topology")


def publish(
    ctx: typer.Context,
    exchange: Annotated[str, typer.Option("--exchange", "-e", help="Exchange ('' = default).")],
    routing_key: Annotated[str, typer.Option("--routing-key", "-k", help="Routing key.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Message type (rr_job).")],
    body: Annotated[
        str | None, typer.Argument(help="The payload: JSON text, e.g. '{\"to\": 1}'.")
    ] = None,
    body_file: Annotated[
        str | None,
        typer.Option(
            "--body-file",
            metavar="PATH",
            help="Read the payload from PATH ('-': standard input), for bodies too large "
            "for a command line. Sent byte for byte.",
        ),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant header.")] = None,
    pipeline: Annotated[str, typer.Option(help="RoadRunner pipeline (rr_pipeline).")] = "",
    header: Annotated[
        list[str] | None, typer.Option("--header", "-H", help="User header NAME=VALUE (repeat).")
    ] = None,
) -> None:
    """Publish one message in Rabbitry's format; print its id and outcome as JSON.

    The outcome is "published" (the broker confirmed it) or "persisted" (the outbox stored it
    for the relay and `rabbitry requeue`). The database is opened only then: with the broker
    up, publishing needs no database. "refused" is true when the broker refused the message
    (no such exchange, or no queue bound for the routing key) rather than being unreachable:
    waiting will not help, the topology must change. The body must be UTF-8 JSON that a PHP
    consumer can decode (no NaN or Infinity, at most 512 levels deep); its bytes are sent as
    given.

    \b
    Exit codes:
      0  published, or stored because the broker was unreachable
      1  not sent and not stored (the message cannot be sent as it is)
      2  bad arguments
      3  refused by the broker, stored in the outbox and flagged refused

    Example: rabbitry publish -e rabbitry.modules -k billing.invoice -t invoice.created '{"id": 7}'
    """
    from rabbitry.app.operations import publish_one
    from rabbitry.messaging import Message
    from rabbitry.messaging.topology import check_name, check_routing_key

    try:
        check_name(text(exchange, "--exchange"), "exchange", allow_empty=True)
        check_routing_key(text(routing_key, "--routing-key"))
    except ValueError as exc:
        fail(str(exc))
    if not text(type_, "--type").strip():
        fail("--type must not be empty")
    if tenant is not None:
        text(tenant, "--tenant")
    text(pipeline, "--pipeline")
    headers: dict[str, tuple[str, ...]] = {}
    for item in header or []:
        name, sep, value = text(item, "--header").partition("=")
        if not sep or not name:
            fail(f"--header {item!r}: expected NAME=VALUE")
        headers[name] = (*headers.get(name, ()), value)
    raw, what = _body_bytes(body, body_file)
    payload = _payload(raw, what)
    message = Message(
        type=type_,
        payload=payload,
        headers=headers,
        tenant=tenant,
        pipeline=pipeline,
        raw_body=raw,
    )
    config = settings(ctx)
    result = run(publish_one(config, message, exchange, routing_key))
    outcome = {"id": result.message_id, "status": result.status.value, "error": result.error}
    print(json.dumps({**outcome, "refused": result.refused}))
    if result.status.value == "failed":
        raise typer.Exit(1)
    if result.refused:
        hint = _namespace_hint(exchange, config.namespace)
        print(
            f"rabbitry: {result.error}; stored in the outbox as refused (the relay tries it "
            f"less and less often; `rabbitry requeue` once the exchange or binding exists).{hint}",
            file=sys.stderr,
        )
        raise typer.Exit(REFUSED_EXIT)


REFUSED_EXIT = 3
"""``rabbitry publish``'s exit code for a message the broker refused (stored, flagged)."""


def _namespace_hint(exchange: str, namespace: str) -> str:
    """A pointer to this namespace's exchange of the same name, for an exchange named in
    another namespace (the quickstart's ``rabbitry.events`` under ``RABBITRY_NAMESPACE``)."""
    prefix, dot, rest = exchange.partition(".")
    if not dot or not rest or prefix == namespace:
        return ""
    return f" Namespace {namespace}'s exchanges are {namespace}.*: did you mean {namespace}.{rest}?"


def _body_bytes(body: str | None, body_file: str | None) -> tuple[bytes, str]:
    """The body's bytes, from the argument or the file, and how to name it in errors."""
    if (body is None) == (body_file is None):
        fail("give the body as BODY or with --body-file PATH (not both)")
    if body is not None:
        try:
            return body.encode("utf-8"), "BODY"
        except UnicodeEncodeError:
            text(body, "BODY")  # fails with the one-line reason
    assert body_file is not None
    try:
        if body_file == "-":
            return sys.stdin.buffer.read(), "the body (standard input)"
        with open(text(body_file, "--body-file"), "rb") as handle:
            return handle.read(), f"the body ({body_file})"
    except OSError as exc:
        fail(f"cannot read --body-file {body_file}: {exc.strerror or exc}")


class _NotJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJson(name)


def _payload(raw: bytes, what: str) -> Any:
    """Parse the body as a PHP consumer would: UTF-8 JSON, no NaN or Infinity, 512 levels."""
    from rabbitry.errors import MessageError
    from rabbitry.events.portable import MAX_DEPTH, check_json

    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        payload = json.loads(decoded, parse_constant=_no_constant)
    except _NotJson as exc:
        fail(f"{what} holds {exc}, which is not JSON (PHP's json_decode refuses it)")
    except json.JSONDecodeError as exc:
        fail(f"{what} is not JSON: {exc}")
    except RecursionError:
        fail(f"{what} is nested deeper than {MAX_DEPTH} levels (PHP's json_decode limit)")
    try:
        check_json(payload, what, nul=True)
    except MessageError as exc:
        fail(str(exc))
    return payload


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
    queue with the reason. Exit 1 when the connection closes before --count messages (or,
    without --count and --timeout, at all). Example: rabbitry consume rabbitry.module.workflow
    --count 10
    """
    from rabbitry.app.operations import consume_printing
    from rabbitry.messaging.topology import check_name

    try:
        check_name(text(queue, "QUEUE"), "queue")
    except ValueError as exc:
        fail(str(exc))

    def emit(record: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()

    seen = run(consume_printing(settings(ctx), queue, emit, count=count, idle_timeout=timeout))
    if timeout is None and (count is None or seen < count):
        # Without an idle timeout the reader returns early only when its connection closed,
        # e.g. on a message the client could not even read: that is not a success.
        fail(
            f"the connection to the broker closed after {seen} message(s) (the queue was "
            "deleted, the broker went away, or a message could not even be read)",
            code=1,
        )


@topology_app.command("declare")
def declare(
    ctx: typer.Context,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Also declare this tenant's queue.")
    ] = None,
) -> None:
    """Declare every exchange and queue (with dead-letter and retry queues). Idempotent."""
    from rabbitry.app.operations import declare_system

    names = run(declare_system(settings(ctx), tenant or []))
    print(f"declared {names.exchanges} exchanges, {names.queues} queues, {names.bindings} bindings")


@topology_app.command("asyncapi")
def asyncapi(
    ctx: typer.Context,
    tenant: Annotated[
        list[str] | None, typer.Option("--tenant", help="Also list this tenant's queues by name.")
    ] = None,
    as_yaml: Annotated[bool, typer.Option("--yaml", help="YAML instead of JSON.")] = False,
) -> None:
    """Print the AsyncAPI 3 document of every exchange, queue, binding and message type.

    The RoadRunner headers included; queues declared at run time (one per tenant, per chat
    gateway) appear by template. Every HTTP process serves the same at /asyncapi.json.
    Example: rabbitry topology asyncapi --yaml > asyncapi.yaml
    """
    import yaml

    from rabbitry.app.asyncapi import asyncapi_document

    try:
        document = asyncapi_document(settings(ctx), tenants=tenant or [])
    except ValueError as exc:
        fail(str(exc))
    if as_yaml:
        sys.stdout.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    else:
        print(json.dumps(document, indent=2, ensure_ascii=False))
