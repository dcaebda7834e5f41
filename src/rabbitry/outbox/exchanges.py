"""Which exchanges exist, asked before a requeue batch is published.

Publishing to a missing exchange makes the broker close the publisher's channel, taking every
other message of the batch with it. One row for a deleted exchange would then fail every row
around it. A requeue run therefore asks once per exchange (a passive declare through the
core's :class:`~rabbitry.messaging.Declarer`) and fails only the rows whose
exchange is missing. An exchange can also disappear *during* a run: when a publish to an
exchange believed present fails, the run asks again (:meth:`ExchangeCheck.recheck`), so that
from then on only that exchange's rows fail, with the true reason.

:meth:`ExchangeCheck.reachable` tells a broker that is down from messages that fail: a run
whose whole batch failed asks it before it records anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rabbitry.config import Settings
from rabbitry.messaging import Declarer

log = logging.getLogger(__name__)


class ExchangeCheck:
    """Remembers, until :meth:`forget`, which exchanges exist. Never raises: when the broker
    cannot be asked, nothing is reported missing and the publish itself finds out."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._declarer: Declarer | None = None
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

    async def recheck(self, name: str) -> bool | None:
        """Ask again whether ``name`` exists (a publish to it failed); ``None``: cannot tell."""
        if not name:
            return True
        self._present.discard(name)
        self._missing.discard(name)
        found = await self._exists(name)
        if found is True:
            self._present.add(name)
        elif found is False:
            self._missing.add(name)
        return found

    async def reachable(self) -> bool:
        """Whether the broker takes a new connection now (a fresh one: the old one may be
        half-dead without knowing it yet)."""
        await self.close()
        try:
            self._declarer = await self._connect()
        except Exception as exc:  # RabbitryError, or a third-party error the seam let through
            log.debug("broker unreachable: %s", exc)
            return False
        return True

    def forget(self) -> None:
        """Ask again next time (exchanges come and go between relay passes)."""
        self._present.clear()
        self._missing.clear()

    async def _exists(self, name: str) -> bool | None:
        try:
            if self._declarer is None:
                self._declarer = await self._connect()
            return await self._declarer.exchange_exists(name)
        # Unreachable or odd: let the publish report it. Not only RabbitryError: a connection
        # cut under the declarer surfaces as aio-pika's own RuntimeError.
        except Exception as exc:
            log.debug("cannot check exchange %r: %s", name, exc)
            await self.close()
            return None

    async def _connect(self) -> Declarer:
        return await Declarer.connect(
            self._settings.amqp_url.get_secret_value(),
            timeout=self._settings.connect_timeout,
            name=f"{self._settings.namespace}-requeue-check",
        )

    async def close(self) -> None:
        declarer, self._declarer = self._declarer, None
        if declarer is not None:
            try:
                await declarer.close()
            except Exception:  # closing a broken connection may fail; nothing to keep
                log.debug("closing the exchange check's connection failed", exc_info=True)
