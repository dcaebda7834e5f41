"""Which exchanges exist, asked before a requeue batch is published.

Publishing to a missing exchange makes the broker close the publisher's channel, taking every
other message of the batch with it. One row for a deleted exchange would then fail every row
around it. A requeue run therefore asks once per exchange (a passive declare through the
core's :class:`~rabbitry.messaging.Declarer`) and fails only the rows whose
exchange is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rabbitry.config import Settings
from rabbitry.errors import RabbitryError
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

    def forget(self) -> None:
        """Ask again next time (exchanges come and go between relay passes)."""
        self._present.clear()
        self._missing.clear()

    async def _exists(self, name: str) -> bool | None:
        try:
            if self._declarer is None:
                self._declarer = await Declarer.connect(
                    self._settings.amqp_url.get_secret_value(),
                    timeout=self._settings.connect_timeout,
                    name=f"{self._settings.namespace}-requeue-check",
                )
            return await self._declarer.exchange_exists(name)
        except RabbitryError as exc:  # unreachable or odd: let the publish report it
            log.debug("cannot check exchange %r: %s", name, exc)
            await self.close()
            return None

    async def close(self) -> None:
        declarer, self._declarer = self._declarer, None
        if declarer is not None:
            try:
                await declarer.close()
            except Exception:  # closing a broken connection may fail; nothing to keep
                log.debug("closing the exchange check's connection failed", exc_info=True)
