"""Which exchanges exist, asked before a requeue batch is published.

Publishing to a missing exchange makes the broker close the publisher's channel, and with it
every other message of the batch, and trips the publisher's circuit breaker. One row for a
deleted exchange would then fail every row around it. A requeue run therefore asks, once per
exchange, with a passive declare on a connection of its own, and fails only the rows whose
exchange is missing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from rabbitry.config import Settings

log = logging.getLogger(__name__)


class ExchangeCheck:
    """Remembers, until :meth:`forget`, which exchanges exist. Never raises: when the broker
    cannot be asked, nothing is reported missing and the publish itself finds out."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._present: set[str] = set()
        self._missing: set[str] = set()

    async def missing(self, names: Iterable[str]) -> set[str]:
        """The exchanges among ``names`` that do not exist (the default exchange always does)."""
        wanted = {name for name in names if name}
        for name in sorted(wanted - self._present - self._missing):
            found = await self._exists(name)
            if found is True:
                self._present.add(name)
            elif found is False:
                self._missing.add(name)
        return wanted & self._missing

    def forget(self) -> None:
        """Ask again next time (exchanges come and go between relay passes)."""
        self._present.clear()
        self._missing.clear()

    async def _exists(self, name: str) -> bool | None:
        try:
            channel = await self._open()
            await channel.declare_exchange(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            self._channel = None  # the broker closed it
            return False
        except Exception as exc:  # unreachable or odd: let the publish report it
            log.debug("cannot check exchange %r: %s", name, exc)
            await self.close()
            return None
        return True

    async def _open(self) -> AbstractChannel:
        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect(
                self._settings.amqp_url.get_secret_value(),
                timeout=self._settings.connect_timeout,
                client_properties={"connection_name": f"{self._settings.namespace}-requeue-check"},
            )
            self._channel = None
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=False)
        return self._channel

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
