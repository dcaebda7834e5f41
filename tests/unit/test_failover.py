"""A cluster's hosts tried one at a time: a host that fails gives way to the next, a refusal
every node would repeat ends the search at once, and when all fail the error names each."""

from __future__ import annotations

import pytest

from rabbitry.amqp.base import LinkClosed, LinkError
from rabbitry.amqp.failover import first_to_open
from rabbitry.amqp.url import Endpoint

CLUSTER = Endpoint.from_url("amqp://h1:1,h2:2,h3:3/").candidates(start=0)


async def test_the_first_host_that_opens_is_used_after_those_that_failed() -> None:
    tried: list[str] = []

    async def open_one(candidate: Endpoint) -> str:
        tried.append(candidate.host)
        if candidate.host != "h3":
            raise LinkError(f"cannot connect to {candidate.where}")
        return candidate.host

    assert await first_to_open(CLUSTER, open_one) == "h3"
    assert tried == ["h1", "h2", "h3"]


@pytest.mark.parametrize("code", [403, 530])
async def test_a_refusal_every_node_would_repeat_ends_the_search(code: int) -> None:
    tried: list[str] = []

    async def open_one(candidate: Endpoint) -> str:
        tried.append(candidate.host)
        raise LinkClosed("refused", code)

    with pytest.raises(LinkClosed) as caught:
        await first_to_open(CLUSTER, open_one)
    assert (caught.value.reply_code, tried) == (code, ["h1"])


async def test_when_every_host_fails_the_error_names_each_failure() -> None:
    async def open_one(candidate: Endpoint) -> str:
        if candidate.host == "h2":
            raise LinkClosed("shutting down", 320)
        raise LinkError(f"cannot connect to {candidate.where}")

    with pytest.raises(LinkError) as caught:
        await first_to_open(CLUSTER, open_one)
    assert str(caught.value) == (
        "no broker host answered: cannot connect to h1:1; h2:2: 320 shutting down; "
        "cannot connect to h3:3"
    )


async def test_a_lone_hosts_failure_is_raised_as_it_is() -> None:
    async def open_one(candidate: Endpoint) -> str:
        raise LinkClosed("shutting down", 320)

    (lone,) = Endpoint.from_url("amqp://h1:1/").candidates()
    with pytest.raises(LinkClosed, match="shutting down"):
        await first_to_open([lone], open_one)
