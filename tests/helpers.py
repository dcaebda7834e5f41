"""Helpers shared by the tests (fixtures live in conftest.py and the part plugins)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Eventually = Callable[..., Awaitable[None]]


async def eventually_true(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
