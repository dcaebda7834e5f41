"""Dead letters: every dead-letter queue with its depth, what died in one and why, and moving
messages back to their queue (:mod:`rabbitry.messaging.deadletters`, the code of ``rabbitry
dead-letters``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from rabbitry.backoffice.overview import Broker, overview
from rabbitry.backoffice.web import Action, Operator, PageRoute
from rabbitry.errors import Invalid, NotFound, RabbitryError
from rabbitry.messaging.deadletters import dead_letter_queue, list_dead_letters, move_dead_letters
from rabbitry.web import resource

router = APIRouter(route_class=PageRoute)
PAGE = 100

BrokerDep = Annotated[Broker, Depends(resource(Broker))]


@router.get("/dead-letters")
async def dead_letter_queues(ctx: Operator, broker: BrokerDep) -> Response:
    figures = await overview(ctx.settings, ctx.database, broker, ctx.app.topology)
    return ctx.render("dead_letter_queues.html", overview=figures)


@router.get("/dead-letters/{queue}")
async def dead_letters(ctx: Operator, broker: BrokerDep, queue: str) -> Response:
    dlq = dead_letter_queue(queue)
    try:
        declarer = await broker.declarer()
        letters, total = await list_dead_letters(declarer, dlq, limit=PAGE)
    except NotFound:
        return ctx.render("missing.html", status=404, what=f"queue {queue!r}")
    except RabbitryError as exc:
        await broker.forget()  # the next page opens a fresh connection
        return ctx.render("missing.html", status=503, what=f"the broker ({exc})")
    return ctx.render("dead_letters.html", queue=dlq, letters=letters, total=total, report=None)


@router.post("/dead-letters/{queue}/move")
async def move(got: Action, broker: BrokerDep, queue: str) -> Response:
    ctx = got.ctx
    ids = [v for v in got.form.get("ids", []) if v and len(v) <= 255]
    every = got.first("scope") == "all"
    if not every and not ids:
        raise Invalid("no dead letter selected")
    dlq = dead_letter_queue(queue)
    try:
        declarer = await broker.declarer()
        report = await move_dead_letters(declarer, ctx.publisher, dlq, None if every else ids)
        letters, total = await list_dead_letters(declarer, dlq, limit=PAGE)
    except NotFound:
        raise NotFound(f"no queue {queue!r}") from None
    except RabbitryError:
        await broker.forget()
        raise
    return ctx.render("dead_letters.html", queue=dlq, letters=letters, total=total, report=report)
