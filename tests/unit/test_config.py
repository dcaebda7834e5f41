"""Settings: defaults, RABBITRY_* variables, rabbitry.yaml, precedence, errors, masking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from rabbitry.config import ManualProcessingMode, Settings, load_settings
from rabbitry.errors import ConfigError, RabbitryError
from rabbitry.messaging.settings import QueueType


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RABBITRY_* from the outer environment, and a working directory without rabbitry.yaml."""
    for name in [n for n in os.environ if n.upper().startswith("RABBITRY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_yaml(directory: Path, text: str, name: str = "rabbitry.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.namespace == "rabbitry"
    assert settings.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.database_url is None
    assert settings.queue_type is QueueType.CLASSIC
    assert settings.manual_processing_mode is ManualProcessingMode.RABBIT
    assert settings.rabbit_active is True
    assert settings.strict_rr_job is True
    assert (settings.prefetch, settings.concurrency, settings.max_attempts) == (200, 32, 5)
    assert (settings.retry_base_delay, settings.retry_max_delay) == (1.0, 300.0)
    assert settings.data_dir == Path("var")
    assert settings.config_file is None
    assert settings.modules == []


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITRY_NAMESPACE", "from-env")
    monkeypatch.setenv("RABBITRY_PREFETCH", "10")
    monkeypatch.setenv("RABBITRY_QUEUE_TYPE", "quorum")
    monkeypatch.setenv("RABBITRY_RABBIT_ACTIVE", "false")
    monkeypatch.setenv("RABBITRY_AMQP_URL", "amqp://u:p@broker:5672/vh")
    settings = load_settings()
    assert settings.namespace == "from-env"
    assert settings.prefetch == 10
    assert settings.queue_type is QueueType.QUORUM
    assert settings.rabbit_active is False
    assert settings.amqp_url.get_secret_value() == "amqp://u:p@broker:5672/vh"


def test_rabbitry_yaml_in_the_working_directory_is_loaded(tmp_path: Path) -> None:
    write_yaml(
        tmp_path,
        """
namespace: from-file
prefetch: 50
queue_type: quorum
modules:
  - name: billing
    routing_keys: ["invoice.*"]
queues:
  - name: emails
    allow_manual_insertion: true
""",
    )
    settings = load_settings()
    assert settings.namespace == "from-file"
    assert settings.prefetch == 50
    assert settings.queue_type is QueueType.QUORUM
    assert [(m.name, m.routing_keys) for m in settings.modules] == [("billing", ["invoice.*"])]
    assert settings.queues[0].name == "emails"
    assert settings.queues[0].allow_manual_insertion is True
    assert settings.config_file == Path("rabbitry.yaml")


def test_an_explicit_config_file_is_used_instead(tmp_path: Path) -> None:
    write_yaml(tmp_path, "namespace: cwd-file\n")
    other = write_yaml(tmp_path, "namespace: explicit-file\n", name="other.yaml")
    settings = load_settings(other)
    assert settings.namespace == "explicit-file"
    assert settings.config_file == other


def test_environment_beats_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_yaml(tmp_path, "namespace: from-file\nprefetch: 50\n")
    monkeypatch.setenv("RABBITRY_NAMESPACE", "from-env")
    settings = load_settings()
    assert settings.namespace == "from-env"
    assert settings.prefetch == 50


def test_explicit_overrides_beat_environment_and_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_yaml(tmp_path, "namespace: from-file\n")
    monkeypatch.setenv("RABBITRY_NAMESPACE", "from-env")
    assert load_settings(namespace="from-flag").namespace == "from-flag"


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    write_yaml(tmp_path, "")
    assert load_settings().namespace == "rabbitry"


@pytest.mark.parametrize("bad", ["has space", "a.b", "", "-lead", "x" * 64, "é", "a#b"], ids=repr)
def test_invalid_namespace_from_the_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("RABBITRY_NAMESPACE", bad)
    with pytest.raises(ConfigError, match="namespace"):
        load_settings()


def test_invalid_namespace_from_the_file_is_a_config_error(tmp_path: Path) -> None:
    write_yaml(tmp_path, "namespace: a.b\n")
    with pytest.raises(ConfigError, match="namespace"):
        load_settings()


def test_namespace_with_a_trailing_newline_is_a_config_error(tmp_path: Path) -> None:
    # A YAML block scalar keeps its final newline: this namespace is "prod\n".
    write_yaml(tmp_path, "namespace: |\n  prod\n")
    with pytest.raises(ConfigError, match="namespace"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RABBITRY_PREFETCH", "0"),
        ("RABBITRY_PREFETCH", "lots"),
        ("RABBITRY_QUEUE_TYPE", "mirrored"),
        ("RABBITRY_PUBLISH_TIMEOUT", "-1"),
        ("RABBITRY_MAX_ATTEMPTS", "0"),
        ("RABBITRY_MANUAL_PROCESSING_MODE", "both"),
    ],
)
def test_bad_values_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, RabbitryError)


def test_retry_base_delay_above_max_delay_is_a_config_error() -> None:
    # Otherwise the RetryPolicy built from these settings raises ValueError much later,
    # when the topology is first computed.
    with pytest.raises(ConfigError, match="retry"):
        load_settings(retry_base_delay=600, retry_max_delay=300)


def test_invalid_module_name_in_the_file_is_a_config_error(tmp_path: Path) -> None:
    write_yaml(tmp_path, "modules:\n  - name: bad.module\n")
    with pytest.raises(ConfigError, match="module name"):
        load_settings()


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    write_yaml(tmp_path, "namespace: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings()


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings()


def test_missing_explicit_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgres://u:p@db/app", "postgresql+asyncpg://u:p@db/app"),
        ("postgresql+asyncpg://u:p@db/app", "postgresql+asyncpg://u:p@db/app"),
        ("sqlite:///tmp/x.db", "sqlite+aiosqlite:///tmp/x.db"),
        ("sqlite+aiosqlite:///tmp/x.db", "sqlite+aiosqlite:///tmp/x.db"),
    ],
)
def test_sql_url_uses_an_async_driver(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("RABBITRY_DATABASE_URL", url)
    assert load_settings().sql_url == expected


def test_sql_url_defaults_to_sqlite_under_data_dir(tmp_path: Path) -> None:
    expected = f"sqlite+aiosqlite:///{tmp_path.resolve()}/var/rabbitry.db"
    assert load_settings().sql_url == expected


def test_sql_url_follows_data_dir_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RABBITRY_DATA_DIR", str(tmp_path / "state"))
    assert load_settings().sql_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/state/rabbitry.db"


def test_secrets_are_masked_in_repr_and_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITRY_AMQP_URL", "amqp://app:amqp-s3cret@broker/")
    monkeypatch.setenv("RABBITRY_DATABASE_URL", "postgresql://app:db-s3cret@db/app")
    monkeypatch.setenv("RABBITRY_REDIS_URL", "redis://:redis-s3cret@cache:6379/0")
    monkeypatch.setenv("RABBITRY_MONGODB_URL", "mongodb://app:mongo-s3cret@mongo/app")
    monkeypatch.setenv("RABBITRY_ADMIN_TOKEN", "token-s3cret-0123456")
    settings = load_settings()
    for text in (repr(settings), str(settings)):
        assert "s3cret" not in text
        assert "**********" in text
    assert settings.admin_token == SecretStr("token-s3cret-0123456")
    assert "db-s3cret" in settings.sql_url  # the unmasked value is there for the engine only


def test_settings_read_the_environment_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITRY_NAMESPACE", "direct-env")
    assert Settings().namespace == "direct-env"


# --- RABBITRY_ENV=production ------------------------------------------------------------------


def production_environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    complete = {
        "RABBITRY_ENV": "production",
        "RABBITRY_DATABASE_URL": "postgresql://rabbitry@db:5432/rabbitry",
        "RABBITRY_ADMIN_TOKEN": "a-long-admin-token",
        "RABBITRY_REDIS_URL": "redis://cache:6379/0",
    }
    for name, value in {**complete, **values}.items():
        monkeypatch.setenv(name, value)


def test_production_with_postgresql_an_admin_token_and_redis_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production_environment(monkeypatch)
    settings = load_settings()
    assert settings.env == "production"
    assert settings.production_gaps() == []


def test_development_is_the_default_and_keeps_its_one_machine_defaults() -> None:
    settings = load_settings()
    assert settings.env == "development"
    assert (settings.database_url, settings.admin_token, settings.redis_url) == (None, None, None)


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("RABBITRY_DATABASE_URL", "", "RABBITRY_DATABASE_URL (a PostgreSQL URL, not SQLite)"),
        ("RABBITRY_DATABASE_URL", "sqlite:///var/r.db", "RABBITRY_DATABASE_URL"),
        ("RABBITRY_ADMIN_TOKEN", "", "RABBITRY_ADMIN_TOKEN"),
        ("RABBITRY_REDIS_URL", " ", "RABBITRY_REDIS_URL"),
    ],
)
def test_production_refuses_each_development_default_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    production_environment(monkeypatch, **{variable: value})
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("RABBITRY_ENV=production: set ")
    assert named in message
    assert "\n" not in message
    others = {"RABBITRY_DATABASE_URL", "RABBITRY_ADMIN_TOKEN", "RABBITRY_REDIS_URL"} - {variable}
    assert not any(other in message for other in others)


def test_production_with_nothing_set_names_all_three_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_yaml(tmp_path, "env: production\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    for name in ("RABBITRY_DATABASE_URL", "RABBITRY_ADMIN_TOKEN", "RABBITRY_REDIS_URL"):
        assert name in message


def test_an_unknown_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="env"):
        load_settings(env="staging")
