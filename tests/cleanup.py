"""Delete every queue and exchange of a test namespace: `python -m tests.cleanup NAMESPACE`."""

from __future__ import annotations

import subprocess
import sys


def names(kind: str) -> list[str]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", f"list_{kind}", "name"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip() and line != "name"]


def delete_namespace(namespace: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    prefix = f"{namespace}."
    for queue in names("queues"):
        if queue.startswith(prefix):
            channel.queue_delete(queue)
    for exchange in names("exchanges"):
        if exchange.startswith(prefix):
            channel.exchange_delete(exchange)
    connection.close()


if __name__ == "__main__":
    for ns in sys.argv[1:]:
        delete_namespace(ns)
