import asyncio
import os

import rabbitry

QUEUE = os.environ.get("EMAILS_QUEUE", "shop.emails")
amqp = rabbitry.AmqpSettings(url=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/"))
policy = rabbitry.RetryPolicy(max_attempts=5, base_delay=1.0)  # retries after 1, 2, 4, 8 s


async def send_email(message: rabbitry.Message) -> None:
    if "@" not in message.payload.get("to", ""):
        raise rabbitry.Reject("not an address")  # to QUEUE.dlq now, the reason in a header
    print("sending to", message.payload["to"], flush=True)  # raising anything else retries


topology = rabbitry.work_queue(QUEUE, policy=policy)  # QUEUE, QUEUE.dlq, the retry queues
emails = rabbitry.Subscription(QUEUE, handlers={"App\\Jobs\\SendEmail": send_email})
worker = rabbitry.Worker("emails", [emails], topology, amqp=amqp, retry=policy)

if __name__ == "__main__":  # or: rabbitry run worker:worker (--reload restarts it on edits)
    asyncio.run(rabbitry.serve(worker))  # until SIGTERM or Ctrl-C, then drains
