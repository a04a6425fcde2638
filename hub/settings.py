"""The hub's settings: one pydantic-settings class, from flags, the environment and a file.

Precedence, highest first: values given in code or on the command line, environment
variables ``LIENTHONG_*`` (``LIENTHONG_DATABASE_URL``, ``LIENTHONG_PORT`` ...), the TOML
file ``<data dir>/hub.toml`` that ``lienthong-hub init`` writes, then the defaults below.

The embedded default needs no server: a SQLite file and a blob folder inside the data dir.
Production points ``database_url`` at PostgreSQL (``postgresql+asyncpg://...``).

HTTPS: ``tls_cert`` (the certificate chain, PEM, leaf first) and ``tls_key`` (its private
key, PEM) make ``serve`` speak TLS 1.2 or newer itself; without them it speaks plain HTTP,
for a reverse proxy in front (see ``deploy/TLS.md``).  Relative paths are taken from the
data dir.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from pathlib import Path
from typing import Any, Final

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from protocol.errors import LocalError
from protocol.policy import (
    DEFAULT_ROUTE_RULES,
    ROUTE_RULES,
    RoutePolicy,
    Secrecy,
    SecrecyPolicy,
    SizeLimits,
)

from .email.settings import EmailSettings

CONFIG_FILE: Final = "hub.toml"
ENV_PREFIX: Final = "LIENTHONG_"
MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
DAY: Final = 86400


class _DataDirToml(PydanticBaseSettingsSource):
    """Reads ``<data dir>/hub.toml``; the data dir comes from the init values or the env."""

    def __init__(self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._init_kwargs = init_kwargs

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        data_dir = self._init_kwargs.get("data_dir") or os.environ.get(ENV_PREFIX + "DATA_DIR")
        if not data_dir:
            return {}
        path = Path(data_dir) / CONFIG_FILE
        if not path.is_file():
            return {}
        try:
            with path.open("rb") as fh:
                values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LocalError(f"cannot read {path}: {exc}") from None
        values.pop("data_dir", None)  # the file lives in the data dir; it cannot move it
        return values


class HubSettings(BaseSettings):
    """Everything a hub process needs to know; see ``docs/api.md`` for the meaning."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path
    #: Default: ``sqlite+aiosqlite:///<data dir>/hub.sqlite3``.
    database_url: str = ""
    #: Default: ``<data dir>/blobs``.
    blob_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: HTTPS: the certificate chain (PEM, leaf first) and its private key; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    token_lifetime: int = Field(default=900, ge=10)
    challenge_lifetime: int = Field(default=60, ge=5)
    enrolment_token_lifetime: int = Field(default=7 * DAY, ge=60)
    key_lifetime: int = Field(default=2 * 365 * DAY, ge=DAY)
    clock_skew: int = Field(default=300, ge=0)

    #: Declared secrecy levels this deployment carries, by CLI name (none, mat).
    secrecy_allowed: list[str] = Field(default_factory=lambda: ["none"])
    #: Route rules: parent, children, siblings, ancestors, descendants, any.
    route_rules: list[str] = Field(default_factory=lambda: sorted(DEFAULT_ROUTE_RULES))
    envelope_max: int = Field(default=4 * MiB, ge=1024)
    body_max: int = Field(default=2 * GiB, ge=16)
    recipients_max: int = Field(default=2000, ge=1)
    #: The batch endpoint is for small documents only.
    batch_body_max: int = Field(default=1 * MiB, ge=16)
    batch_request_max: int = Field(default=64 * MiB, ge=1024)
    batch_items_max: int = Field(default=1000, ge=1)

    #: How long an upload waits for its hub receipt (the log indexes events in batches).
    receipt_wait: float = Field(default=5.0, ge=0)
    #: The log's origin is ``lienthong.hub/<hub_name>``.
    hub_name: str = Field(default="lienthong", pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_]{0,63}$")
    retention_days: int = Field(default=90, ge=0)
    gc_interval: int = Field(default=3600, ge=1)
    mailbox_limit_max: int = Field(default=500, ge=1)
    #: Apply migrations when the app starts (``serve`` does; tests migrate a template).
    migrate_on_start: bool = True
    log_level: str = "info"
    #: The e-mail gateway (``[email]`` in hub.toml, ``LIENTHONG_EMAIL__*``): off by default.
    email: EmailSettings = Field(default_factory=EmailSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        return (init_settings, env_settings, _DataDirToml(settings_cls, init_kwargs))

    @field_validator("secrecy_allowed")
    @classmethod
    def _check_secrecy(cls, value: list[str]) -> list[str]:
        try:
            SecrecyPolicy(frozenset(Secrecy.from_name(name) for name in value))
        except LocalError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("route_rules")
    @classmethod
    def _check_routes(cls, value: list[str]) -> list[str]:
        unknown = set(value) - ROUTE_RULES
        if unknown:
            raise ValueError(f"unknown route rules {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> HubSettings:
        data = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{data / 'hub.sqlite3'}")
        if self.blob_dir is None:
            object.__setattr__(self, "blob_dir", data / "blobs")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None:
                object.__setattr__(self, name, data / path.expanduser())
        return self

    # -- derived objects ---------------------------------------------------------------

    @property
    def blobs_path(self) -> Path:
        assert self.blob_dir is not None  # set by the validator
        return self.blob_dir

    @property
    def retention_seconds(self) -> int:
        return self.retention_days * DAY

    def secrecy_policy(self) -> SecrecyPolicy:
        return SecrecyPolicy(frozenset(Secrecy.from_name(name) for name in self.secrecy_allowed))

    def route_policy(self) -> RoutePolicy:
        return RoutePolicy(frozenset(self.route_rules))

    @property
    def scheme(self) -> str:
        return "http" if self.tls_cert is None else "https"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or newer), or None for plain HTTP.

        Raises LocalError naming the setting when a file is missing or unreadable, or the
        key does not belong to the certificate: ``serve`` stops before it listens.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if not path.is_file():
                raise LocalError(f"{name}: {path} is not a file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except OSError as exc:  # ssl.SSLError too: a bad PEM, a key of another certificate
            raise LocalError(
                f"tls_cert {self.tls_cert} and tls_key {self.tls_key} do not load: {exc}"
            ) from None
        return context

    def size_limits(self) -> SizeLimits:
        return SizeLimits(
            envelope_max=self.envelope_max,
            body_max=self.body_max,
            recipients_max=self.recipients_max,
        )


def load_settings(data_dir: Path | str | None = None, **overrides: Any) -> HubSettings:
    """Settings for the hub in ``data_dir`` (or ``LIENTHONG_DATA_DIR``), with overrides.

    Overrides whose value is None are dropped, so CLI options left out fall through to the
    environment and the file.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = Path(data_dir)
    try:
        return HubSettings(**values)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise LocalError(f"settings: {exc}") from None
