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
    monkeypatch.setenv("RABBITRY_ADMIN_TOKEN", "token-s3cret")
    settings = load_settings()
    for text in (repr(settings), str(settings)):
        assert "s3cret" not in text
        assert "**********" in text
    assert settings.admin_token == SecretStr("token-s3cret")
    assert "db-s3cret" in settings.sql_url  # the unmasked value is there for the engine only


def test_settings_read_the_environment_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITRY_NAMESPACE", "direct-env")
    assert Settings().namespace == "direct-env"
