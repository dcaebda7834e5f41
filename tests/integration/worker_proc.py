"""A worker process for test_worker.py: what ``rabbitry worker ...`` does, with a slow handler.

Usage: python worker_proc.py QUEUE STARTED_FILE FINISHED_FILE HANDLER_SECONDS

Settings come from the environment (RABBITRY_NAMESPACE, RABBITRY_CONCURRENCY, ...). The
handler appends the message id to STARTED_FILE when it begins and to FINISHED_FILE when it
ends (just before the worker acks it). The process prints ``ready`` once it consumes and
stops on SIGTERM/SIGINT: stop taking work, drain, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from rabbitry.config import Settings
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.service import install_signal_handlers
from rabbitry.messaging.topology import work_queue
from rabbitry.messaging.worker import Worker


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


async def main(queue: str, started: Path, finished: Path, seconds: float) -> None:
    settings = Settings()

    async def slow(message: Message) -> None:
        _append(started, message.id)
        await asyncio.sleep(seconds)
        _append(finished, message.id)

    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    worker = Worker(
        f"{settings.namespace}-proc",
        [Subscription(queue, default=slow)],
        work_queue(queue, policy=settings.retry, queue_type=settings.queue_type),
        amqp=settings.amqp,
        retry=settings.retry,
    )

    async def announce() -> None:
        await worker.connected.wait()
        print("ready", flush=True)

    announcer = asyncio.create_task(announce())
    await worker.run(stopping)
    announcer.cancel()


if __name__ == "__main__":
    queue_name, started_file, finished_file, handler_seconds = sys.argv[1:5]
    asyncio.run(main(queue_name, Path(started_file), Path(finished_file), float(handler_seconds)))
