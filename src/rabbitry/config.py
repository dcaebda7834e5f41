"""Settings, parsed once at the edge (CLI or app factory) and passed down.

Every key can come from the environment (``RABBITRY_<KEY>``) or from ``rabbitry.yaml``
(the same keys in lower case, plus the topology sections: ``modules`` and ``queues``).
The environment wins over the file. The parts receive a :class:`Settings`; the messaging
library takes only its groups (:attr:`Settings.amqp`, :attr:`Settings.retry`). Nothing below
the edge reads ``os.environ``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from rabbitry.errors import ConfigError
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import AmqpSettings, QueueType, validate_name
from rabbitry.messaging.topology import check_name

MIN_ADMIN_TOKEN = 16  # characters


class Environment(StrEnum):
    """``RABBITRY_ENV``: ``production`` refuses settings that only suit one machine."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class ManualProcessingMode(StrEnum):
    RABBIT = "rabbit"
    DB = "db"


class ModuleConfig(BaseModel):
    """A module of the events part: its queue hears the routing keys it lists on the modules
    exchange."""

    name: str
    routing_keys: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "module name")


class RegistryEntry(BaseModel):
    """A queue of the outbox's registry: where a message goes, and whether users may send to it."""

    name: str
    description: str = ""
    allow_manual_insertion: bool = False
    classname: str = ""
    exchange: str = ""
    # May hold {field} placeholders, filled from the record a user sends (validated names).
    routing_key: str = ""
    # What a record sent by hand becomes: its rr_job ("" = the routing key), and its body:
    # "record" (the record's fields) or "change" (a change event of it, for the event store).
    message_type: str = ""
    payload: Literal["record", "change"] = "record"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, "queue name")


class Settings(BaseSettings):
    """Everything a Rabbitry process needs to know, typed."""

    model_config = SettingsConfigDict(env_prefix="RABBITRY_", extra="ignore")

    env: Environment = Environment.DEVELOPMENT
    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    mongodb_url: SecretStr | None = None
    namespace: str = "rabbitry"
    rabbit_active: bool = True
    manual_processing_mode: ManualProcessingMode = ManualProcessingMode.RABBIT
    admin_token: SecretStr | None = None
    # /metrics: true → the admin token only; false → anyone, without the tenants' series.
    metrics_require_admin: bool = False
    # Sizes bounded before they are read (docs/security.md): HTTP request bodies, WebSocket
    # frames and the frames queued per socket, and the sockets one user may hold per gateway.
    http_max_body: int = Field(default=1_048_576, ge=1024)
    ws_max_size: int = Field(default=65_536, ge=1024)
    ws_max_queue: int = Field(default=8, ge=1)
    chat_max_sockets_per_user: int = Field(default=16, ge=1)
    session_cache_max_entries: int = Field(default=100_000, ge=1)
    queue_type: QueueType = QueueType.CLASSIC
    # Event-sourcing queues, each with one active consumer (see rabbitry.events.topology).
    events_partitions: int = Field(default=1, ge=1, le=64)
    data_dir: Path = Path("var")
    config_file: Path | None = None

    publish_timeout: float = Field(default=5.0, gt=0)
    connect_timeout: float = Field(default=3.0, gt=0)
    circuit_open_seconds: float = Field(default=5.0, ge=0)
    prefetch: int = Field(default=200, ge=1, le=65535)
    concurrency: int = Field(default=32, ge=1)
    max_attempts: int = Field(default=5, ge=1, le=50)
    retry_base_delay: float = Field(default=1.0, gt=0)
    retry_max_delay: float = Field(default=300.0, gt=0)
    drain_timeout: float = Field(default=30.0, gt=0)
    rpc_timeout: float = Field(default=10.0, gt=0)
    strict_rr_job: bool = True
    # TLS for amqps:// (the URL's cafile/certfile/keyfile win): the broker's CA, our client
    # certificate and its key.
    amqp_ca_file: Path | None = None
    amqp_cert_file: Path | None = None
    amqp_key_file: Path | None = None

    # Sessions (part 3). The service token is DISPATCH's credential towards SESSION (never the
    # admin token); session_url is where DISPATCH finds SESSION (`rabbitry up`: itself).
    session_ttl: float = Field(default=86400.0, gt=0)
    session_cache_ttl: float = Field(default=300.0, gt=0)
    service_token: SecretStr | None = None
    session_url: str | None = None
    mongodb_database: str = "rabbitry"
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout: float = Field(default=60.0, gt=0)  # the throttle's window, fixed
    login_max_per_client: int = Field(default=50, ge=1)  # attempts per address per window
    # argon2 checks running at once per process: more wait (each costs ~64 MiB and a core).
    password_checks: int = Field(default=4, ge=1)
    # DISPATCH hears of new tenants from USER's notice at once; this re-read of the tenants
    # table is the safety net (a notice lost to a broker outage, a tenant inserted by hand).
    tenant_reconcile_interval: float = Field(default=30.0, gt=0)
    # DISPATCH → SESSION: unset, the batch call whenever SESSION offers it (learnt on first
    # use); true, always the batch call; false, one DELETE per session. Requests in flight
    # per DISPATCH process, whatever the number of tenants:
    dispatch_batch: bool | None = None
    dispatch_concurrency: int = Field(default=16, ge=1, le=1024)
    # argon2id cost (RFC 9106's low-memory profile by default); tests lower it to stay fast.
    password_time_cost: int = Field(default=3, ge=1)
    password_memory_kib: int = Field(default=65536, ge=8)

    # The back-office dashboard: a reading every interval, the last window's kept in memory;
    # the /metrics of the system's other processes (gateways, workers, relay), to chart their
    # counters beside this process's own (`rabbitry up` needs none: every part is here).
    dashboard_interval: float = Field(default=5.0, gt=0)
    dashboard_window: float = Field(default=600.0, gt=0)
    dashboard_metrics_urls: list[str] = Field(default_factory=list)

    modules: list[ModuleConfig] = Field(default_factory=list)
    queues: list[RegistryEntry] = Field(default_factory=list)
    # Work queues of your own services (rabbitry.work_queue) watched beside the system's own:
    # `rabbitry dead-letters list`, `rabbitry status` and the dashboard show their dead
    # letters too. RABBITRY_WORK_QUEUES='["shop.orders"]', or work_queues: in rabbitry.yaml.
    work_queues: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("work_queues")
    @classmethod
    def _work_queues(cls, value: list[str]) -> list[str]:
        # A queue's own name: its dead-letter queue is derived (dlq_name), never configured.
        return [check_name(name.removesuffix(".dlq"), "work queue") for name in value]

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return validate_name(value, "namespace")

    @model_validator(mode="after")
    def _admin_token(self) -> Settings:
        # An empty token would let an empty login field into the back-office and sign its
        # cookies with an empty key; a short one is guessable. Unset: one is generated.
        if self.admin_token is None:
            return self
        given = self.admin_token.get_secret_value().strip()
        if not given and self.env is Environment.PRODUCTION:
            return self  # production_gaps() names it, with whatever else is missing
        if len(given) < MIN_ADMIN_TOKEN:
            raise ValueError(
                f"RABBITRY_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters "
                "(unset it to have one generated)"
            )
        return self

    @model_validator(mode="after")
    def _retry_delays(self) -> Settings:
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError("retry_base_delay must not exceed retry_max_delay")
        return self

    def production_gaps(self) -> list[str]:
        """What a production deployment must set and these settings leave to the development
        defaults (empty unless ``env`` is production): each default works on one machine and
        fails quietly on several (a SQLite file per container, an admin token generated anew
        by each process, a session cache in each process's memory, so a revoked session stays
        valid in the others)."""
        if self.env is not Environment.PRODUCTION:
            return []
        gaps: list[str] = []
        if not _set(self.database_url) or self.sql_url.startswith("sqlite"):
            gaps.append("RABBITRY_DATABASE_URL (a PostgreSQL URL, not SQLite)")
        if not _set(self.admin_token):
            gaps.append("RABBITRY_ADMIN_TOKEN")
        if not _set(self.redis_url):
            gaps.append("RABBITRY_REDIS_URL (the session cache all processes share)")
        return gaps

    @property
    def amqp(self) -> AmqpSettings:
        """The broker settings the messaging library takes."""
        return AmqpSettings(
            url=self.amqp_url.get_secret_value(),
            active=self.rabbit_active,
            connect_timeout=self.connect_timeout,
            publish_timeout=self.publish_timeout,
            circuit_open_seconds=self.circuit_open_seconds,
            prefetch=self.prefetch,
            concurrency=self.concurrency,
            drain_timeout=self.drain_timeout,
            strict_rr_job=self.strict_rr_job,
            queue_type=self.queue_type,
            rpc_timeout=self.rpc_timeout,
            ca_file=_path(self.amqp_ca_file),
            cert_file=_path(self.amqp_cert_file),
            key_file=_path(self.amqp_key_file),
        )

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every work queue of this deployment."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay=self.retry_base_delay,
            max_delay=self.retry_max_delay,
        )

    @property
    def sql_url(self) -> str:
        """The database URL with an async driver; SQLite under ``data_dir`` when unset."""
        if self.database_url is None:
            return f"sqlite+aiosqlite:///{(self.data_dir / 'rabbitry.db').resolve()}"
        url = self.database_url.get_secret_value()
        for plain, driver in (
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgres://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from ``rabbitry.yaml`` (if given or present) then the environment.

    Raises :class:`ConfigError` with a one-line reason when anything is invalid, and, when
    ``env`` is production, when a development default is left (:meth:`Settings.production_gaps`).
    """
    path = config_file
    if path is None and Path("rabbitry.yaml").is_file():
        path = Path("rabbitry.yaml")
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        file_values = loaded
        file_values["config_file"] = path
    try:
        # Environment beats the file: pydantic-settings gives init kwargs priority, so only
        # pass file keys the environment does not set.
        settings = Settings(**{**_without_env(file_values), **overrides})
    except ValidationError as exc:
        # Each error's field and reason, never its input: the input may be a secret.
        raise ConfigError(_described(exc)) from None
    except ValueError as exc:
        raise ConfigError(_first_line(str(exc))) from exc
    gaps = settings.production_gaps()
    if gaps:
        raise ConfigError(f"RABBITRY_ENV=production: set {', '.join(gaps)}")
    return settings


def _without_env(values: dict[str, Any]) -> dict[str, Any]:
    import os  # only the edge reads the environment, to let it win over the file

    return {k: v for k, v in values.items() if f"RABBITRY_{k.upper()}" not in os.environ}


def _described(error: ValidationError) -> str:
    parts = []
    for found in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in found.get("loc", ()))
        reason = str(found.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {reason}" if where else reason)
    return "; ".join(parts) or "invalid settings"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else text


def _set(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value().strip())


def _path(value: Path | None) -> str | None:
    return None if value is None else str(value)
