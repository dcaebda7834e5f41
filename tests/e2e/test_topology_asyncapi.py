"""``rabbitry topology asyncapi``: the document a PHP team reads, printed by the CLI, as JSON
or YAML, valid AsyncAPI 3, naming the broker's hosts but never its credentials."""

from __future__ import annotations

import json
import subprocess

import yaml

from helpers import RABBITRY, cli_environment, schema_validator
from rabbitry.config import Settings


def test_the_cli_prints_the_document_as_json_and_yaml(settings: Settings) -> None:
    env = cli_environment(
        settings,
        RABBITRY_AMQP_URL="amqp://ops:n0t-in-the-doc@mq.internal:5672/",
        # A complete production configuration is accepted (nothing here connects to it).
        RABBITRY_ENV="production",
        RABBITRY_DATABASE_URL="postgresql://rabbitry@db.internal/rabbitry",
        RABBITRY_ADMIN_TOKEN="admin-token-for-the-test",
        RABBITRY_REDIS_URL="redis://cache.internal:6379/0",
    )
    outputs = [
        subprocess.run(
            [RABBITRY, "topology", "asyncapi", "--tenant", "acme", *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for extra in ([], ["--yaml"])
    ]
    document = json.loads(outputs[0])
    assert yaml.safe_load(outputs[1]) == document
    assert list(schema_validator("asyncapi-3.0.0.json").iter_errors(document)) == []
    assert "n0t-in-the-doc" not in outputs[0] and "admin-token" not in outputs[0]
    assert document["servers"]["broker"]["host"] == "mq.internal:5672"
    addresses = {channel["address"] for channel in document["channels"].values()}
    ns = settings.namespace
    assert {f"{ns}.tenant.acme.removals", f"{ns}.event-sourcing.p0"} <= addresses


def test_a_bad_tenant_is_a_one_line_usage_error(settings: Settings) -> None:
    done = subprocess.run(
        [RABBITRY, "topology", "asyncapi", "--tenant", "No Spaces"],
        env=cli_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("rabbitry: error: invalid tenant")
