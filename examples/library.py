"""Rabbitry as a library: declare a work queue, publish, consume with retries, dead-letter.

Run it against a local broker:  python examples/library.py
(RABBITRY_NAMESPACE picks the prefix of every queue it creates; they are deleted at the end.)
"""

from __future__ import annotations

import asyncio

from rabbitry import (
    Declarer,
    Message,
    Publisher,
    Reject,
    Route,
    Subscription,
    Worker,
    dlq_name,
    load_settings,
    work_queue,
)


async def main() -> None:
    settings = load_settings()
    queue = f"{settings.namespace}.example.emails"
    # The work queue comes with its dead-letter queue and one retry queue per backoff tier.
    topology = work_queue(queue, policy=settings.retry)
    sent: list[str] = []
    done = asyncio.Event()

    async def send_email(message: Message) -> None:
        if "@" not in message.payload["to"]:
            raise Reject(f"not an address: {message.payload['to']!r}")  # dead-letter now
        sent.append(message.payload["to"])
        if len(sent) == 2:
            done.set()

    async with await Declarer.connect(settings.amqp.url) as declarer:
        await declarer.declare(topology)
        async with Publisher(settings.amqp) as publisher:
            for to in ("ana@example.com", "nobody", "bo@example.com"):
                result = await publisher.publish(
                    Message(type="App\\Jobs\\SendEmail", payload={"to": to}), Route("", queue)
                )
                print(f"published {result.message_id}: {result.status}")

        subscription = Subscription(queue, handlers={"App\\Jobs\\SendEmail": send_email})
        worker = Worker("example", [subscription], topology, amqp=settings.amqp)
        stopping = asyncio.Event()
        running = asyncio.create_task(worker.run(stopping))
        await asyncio.wait_for(done.wait(), timeout=30)
        stopping.set()
        await running
        print(
            f"sent to {sorted(sent)}; dead-lettered: {await declarer.queue_size(dlq_name(queue))}"
        )
        await declarer.delete(topology)


if __name__ == "__main__":
    asyncio.run(main())
