"""Schemathesis against the OpenAPI schema of a running ``rabbitry up`` (a real process, real
broker, SQLite and Redis), whose routers are the union of every ``rabbitry serve NAME`` server:
every operation, with the admin token, a user token and no token, valid and invalid input.

What must hold for every case: no 5xx; every error answers a JSON object with an ``error``;
nothing of the other tenant (its username, its sessions) reaches anyone but the admin.
Seeded and bounded (:data:`CASES` per operation and credential), so the suite takes a minute or
two; the figures are in docs/security.md."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from helpers import RABBITRY, delete_namespace, free_port, wait_until
from rabbitry.app.http import create_app
from rabbitry.app.registry import all_routers, servers
from rabbitry.config import Settings

ADMIN = "fuzz-admin-token-0123456789"
CASES = 20  # per operation and credential (valid, invalid and aimed input share them)
SECRET = "othersecretuser"  # the other tenant's username: no one but the admin may see it


@dataclass
class System:
    base: str
    user_token: str
    other_user_id: int
    other_session: str


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    directory = tmp_path_factory.mktemp("fuzz-up")
    namespace = "t" + uuid.uuid4().hex[:10]
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(directory / "var"),
        "RABBITRY_ADMIN_TOKEN": ADMIN,
        "RABBITRY_REDIS_URL": "redis://127.0.0.1:6379/0",
        "RABBITRY_PASSWORD_TIME_COST": "1",
        "RABBITRY_PASSWORD_MEMORY_KIB": "1024",
        # DISPATCH serves the tenants there are at start: the hundreds the fuzzer creates
        # would each cost a broker connection on the shared broker.
        "RABBITRY_TENANT_POLL_INTERVAL": "3600",
        # The fuzzer logs in hundreds of times from one address.
        "RABBITRY_LOGIN_MAX_PER_CLIENT": "100000",
    }
    log_path = directory / "up.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [RABBITRY, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, what="/healthz")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        ids = {}
        for tenant, username in (("acme", "ann"), ("other", SECRET)):
            made = httpx.post(f"{base}/api/tenants", json={"name": tenant}, headers=admin)
            assert made.status_code == 201, made.text
            user = httpx.post(
                f"{base}/api/tenants/{tenant}/users",
                json={"username": username, "password": "pw"},
                headers=admin,
                timeout=30,
            )
            assert user.status_code == 201, user.text
            ids[tenant] = int(user.json()["id"])
        logins = {
            tenant: httpx.post(
                f"{base}/api/tenants/{tenant}/sessions",
                json={"username": username, "password": "pw"},
                timeout=30,
            ).json()
            for tenant, username in (("acme", "ann"), ("other", SECRET))
        }
        yield System(base, logins["acme"]["token"], ids["other"], logins["other"]["session_id"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        asyncio.run(delete_namespace(namespace))
    output = log_path.read_text()
    assert "Traceback" not in output, output[-5000:]


def test_every_servers_schema_is_part_of_ups_so_fuzzing_up_covers_them_all() -> None:
    settings = Settings(namespace="unused", admin_token=ADMIN)
    union = create_app(settings, routers=all_routers()).openapi()["paths"]
    for name, routers in servers().items():
        paths = create_app(settings, routers=routers).openapi()["paths"]
        for path, operations in paths.items():
            assert set(operations) <= set(union.get(path, {})), (name, path)


@dataclass
class Tally:
    operations: int = 0
    cases: int = 0
    by_status: dict[int, int] | None = None


TALLY = Tally(by_status={})


def _check(response: schemathesis.Response, credential: str) -> None:
    where = f"{response.request.method} {response.request.url} [{credential}]"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        headers = {name.lower(): values for name, values in response.headers.items()}
        kind = ";".join(headers.get("content-type", []))
        assert kind.startswith("application/json"), f"{where}: {kind} {response.text[:200]}"
        body = response.json()
        assert isinstance(body, dict) and body.get("error"), f"{where}: {response.text[:300]}"
    if credential != "admin":
        assert SECRET not in response.text, f"{where} leaked: {response.text[:300]}"


def _strategies(operation: Any, system: System) -> st.SearchStrategy[Any]:
    kinds = [
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ]
    # Aim at the other tenant's data on purpose: random names rarely hit it.
    names = {p["name"] for p in operation.definition.raw.get("parameters", [])}
    aimed = {
        name: value
        for name, value in (
            ("tenant", "other"),
            ("user_id", system.other_user_id),
            ("session_id", system.other_session),
        )
        if name in names
    }
    if aimed:
        path_params = {k: v for k, v in aimed.items() if f"{{{k}}}" in operation.path}
        query = {k: v for k, v in aimed.items() if k not in path_params}
        kinds.append(
            operation.as_strategy(
                GenerationMode.POSITIVE, path_parameters=path_params or None, query=query or None
            )
        )
    return st.one_of(kinds)


def _fuzz(
    operation: Any,
    credential: str,
    headers: dict[str, str],
    system: System,
    session: requests.Session,
) -> None:
    @settings(
        max_examples=CASES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_strategies(operation, system))
    def run(case: Any) -> None:
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(base_url=system.base, session=session, timeout=30)
        TALLY.cases += 1
        assert TALLY.by_status is not None
        TALLY.by_status[response.status_code] = TALLY.by_status.get(response.status_code, 0) + 1
        _check(response, credential)

    run()


def test_no_operation_answers_5xx_or_a_non_json_error_or_another_tenants_data(
    system: System,
) -> None:
    raw = httpx.get(f"{system.base}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    credentials = {
        "admin": {"Authorization": f"Bearer {ADMIN}"},
        "user": {"Authorization": f"Bearer {system.user_token}"},
        "none": {},
    }
    session = requests.Session()
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operations.append(result.ok())
    assert len(operations) >= 10
    for operation in operations:
        TALLY.operations += 1
        for credential, headers in credentials.items():
            _fuzz(operation, credential, headers, system, session)
    print(
        json.dumps(
            {"operations": TALLY.operations, "cases": TALLY.cases, "by_status": TALLY.by_status}
        )
    )


def test_the_public_health_and_metrics_routes_leak_nothing(system: System) -> None:
    health = httpx.get(f"{system.base}/healthz")
    assert health.status_code == 200 and set(health.json()) >= {"status", "database"}
    exposition = httpx.get(f"{system.base}/metrics").text
    assert ".tenant.other." not in exposition and ".tenant.acme." not in exposition
