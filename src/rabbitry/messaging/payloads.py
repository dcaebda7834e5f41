"""Typed payloads: a handler that declares a model for the payload gets it validated.

A handler's first parameter says what it takes. Annotated :class:`Message` (or not annotated)
it gets the message as it is and nothing here runs for it. Annotated with anything else (a
pydantic model, a dataclass, a ``TypedDict``, ``list[int]`` …), the payload is validated into
that type first; a payload that does not validate is a :class:`PayloadError` (a
:class:`~rabbitry.errors.MessageError`), so the consumer dead-letters it with the validation
error as its reason instead of retrying it. A second parameter, if any, gets the message::

    async def on_order(order: Order, message: Message) -> None: ...

The adapter is built once per handler, when the :class:`~rabbitry.Subscription` is made, so
what a typed handler costs per message is its validation alone. pydantic is imported only then.
On the publishing side a pydantic model or a dataclass may be a message's payload
(see :func:`rabbitry.messaging.envelope.encode_body`).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import Message

Handler = Callable[[Message], Awaitable[object]]
"""What the consumer calls: the message in, an optional reply out."""

AnyHandler = Callable[[Any], Awaitable[object]] | Callable[[Any, Message], Awaitable[object]]
"""What a subscription accepts: a :data:`Handler`, or one that takes a typed payload."""


class PayloadError(MessageError):
    """The payload does not validate as the type its handler declared."""


def adapt(handler: AnyHandler) -> Handler:
    """``handler`` as a :data:`Handler`: itself when it takes a :class:`Message`, else
    wrapped so that it gets the payload validated as its first parameter declares."""
    target = _payload_type(handler)
    if target is None:
        return typing.cast(Handler, handler)
    from pydantic import TypeAdapter, ValidationError  # only for typed handlers

    adapter: TypeAdapter[Any] = TypeAdapter(target)
    validate = adapter.validate_python
    name = getattr(target, "__name__", str(target))
    with_message = _arity(handler) >= 2
    call = typing.cast(Callable[..., Awaitable[object]], handler)

    async def typed(message: Message) -> object:
        try:
            payload = validate(message.payload)
        except ValidationError as exc:
            raise PayloadError(f"payload is not a valid {name}: {_summary(exc)}") from None
        return await (call(payload, message) if with_message else call(payload))

    typed.__name__ = getattr(handler, "__name__", "typed")
    typed.__qualname__ = getattr(handler, "__qualname__", typed.__name__)
    typed.__doc__ = getattr(handler, "__doc__", None)
    typed.__wrapped__ = handler  # type: ignore[attr-defined]
    return typed


def _payload_type(handler: AnyHandler) -> Any | None:
    """The type the first parameter declares, or ``None`` for a plain message handler."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or a C callable: no annotations to read
        return None
    parameters = list(signature.parameters.values())
    if not parameters:
        raise TypeError(f"handler {handler!r} takes no argument; it needs the message")
    first = parameters[0]
    if first.annotation is inspect.Parameter.empty:
        return None
    try:
        hints = typing.get_type_hints(_function_of(handler))
    except Exception as exc:  # a name the annotation uses that its module does not define
        raise TypeError(f"cannot read the annotations of handler {handler!r}: {exc}") from exc
    declared = hints.get(first.name)
    if declared is None or declared is Message or declared is Any:
        return None
    return declared


def _function_of(handler: Any) -> Any:
    """Where a handler's annotations live: a partial's function, a callable object's
    ``__call__`` (its parameter names are the ones the signature shows)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.isfunction(handler) or inspect.ismethod(handler):
        return handler
    return type(handler).__call__


def _arity(handler: AnyHandler) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in inspect.signature(handler).parameters.values())


def _summary(exc: Any) -> str:
    # pydantic's str() spans lines and links to its docs; a dead-letter reason is one line.
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
