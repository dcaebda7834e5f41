"""The lifecycle every long-running part of Rabbitry follows (workers, relay, gateways).

A service runs until ``stopping`` is set, then stops taking work, drains what is in flight and
returns. ``rabbitry up`` runs several services in one process; ``rabbitry worker NAME`` runs one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Service(Protocol):
    name: str

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set; then drain and return."""
