"""What every part's routes share (:mod:`rabbitry.web`): the error tree's HTTP statuses, the
app's typed state, and the app answering an error a route lets go as JSON with its status."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, Depends

from rabbitry.app.http import create_app
from rabbitry.config import Settings
from rabbitry.errors import (
    BrokerUnavailable,
    ConfigError,
    Conflict,
    Invalid,
    MessageError,
    NotFound,
    PublishTimeout,
    RabbitryError,
    Refused,
    StorageError,
)
from rabbitry.outbox.filters import FilterError
from rabbitry.outbox.manual import ManualInsertionRefused
from rabbitry.web import AppState, SettingsDep, resource, status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (Invalid("bad name"), 400),
        (FilterError("TO needs FROM"), 400),
        (MessageError("not JSON"), 400),
        (Refused("closed"), 403),
        (ManualInsertionRefused("no manual insertion"), 403),
        (NotFound("no tenant"), 404),
        (Conflict("exists"), 409),
        (BrokerUnavailable("down"), 503),
        (PublishTimeout("no confirm"), 503),
        (StorageError("database down"), 503),
        (ConfigError("bad setting"), 500),
        (RabbitryError("anything else"), 500),
    ],
)
def test_each_error_of_the_tree_has_its_status(error: RabbitryError, status: int) -> None:
    assert status_of(error) == status


def test_validation_errors_are_still_value_errors() -> None:
    # Every check raised ValueError before the tree had Invalid: callers catching it still do.
    assert issubclass(Invalid, ValueError) and issubclass(FilterError, ValueError)


class Counter:
    def __init__(self) -> None:
        self.hits = 0


async def test_routes_take_the_typed_state_and_errors_become_json() -> None:
    router = APIRouter()

    @router.get("/tenant/{name}")
    async def tenant(name: str, settings: SettingsDep) -> dict[str, str]:
        if name == "taken":
            raise Conflict(f"tenant {name!r} exists already")
        if name == "bad name":
            raise Invalid(f"invalid tenant name {name!r}")
        return {"namespace": settings.namespace}

    @router.get("/count")
    async def count(counter: Counter = Depends(resource(Counter))) -> dict[str, int]:
        counter.hits += 1
        return {"hits": counter.hits}

    app = create_app(Settings(namespace="web-test"), routers=[router])
    AppState.of(app).put(Counter, Counter())  # what a part's lifespan does
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rabbitry") as client:
        assert (await client.get("/tenant/acme")).json() == {"namespace": "web-test"}
        taken = await client.get("/tenant/taken")
        assert taken.status_code == 409
        assert taken.json() == {"error": "tenant 'taken' exists already"}
        bad = await client.get("/tenant/bad name")
        assert bad.status_code == 400 and "invalid tenant name" in bad.json()["error"]
        assert (await client.get("/count")).json() == {"hits": 1}
        assert (await client.get("/count")).json() == {"hits": 2}


def test_a_resource_no_served_part_provides_is_a_clear_error() -> None:
    state = AppState(Settings())
    assert state.find(Counter) is None
    with pytest.raises(RuntimeError, match="no Counter in the app's state"):
        state.get(Counter)
