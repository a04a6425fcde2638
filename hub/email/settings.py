"""Settings of the e-mail gateway: the ``[email]`` table of ``hub.toml``.

Environment variables use a double underscore: ``LIENTHONG_EMAIL__ADDRESS``,
``LIENTHONG_EMAIL__RELAY_HOST``, ``LIENTHONG_EMAIL__SMTP_PORT`` ...  Nothing here is
enabled by default: the inbound server needs ``smtp_port`` (or ``serve --smtp-port``), the
outbound sender needs ``relay_host``; both need the gateway ``address``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

MiB: Final = 1024 * 1024
#: No delay configured for an urgency: that urgency never falls back to e-mail.
NEVER: Final = 0


class EmailSettings(BaseModel):
    """The gateway's address, its inbound SMTP server and its outbound relay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The gateway's address: what offices send to, and the From of what the hub sends.
    address: str = ""
    #: Display name of the gateway in From headers.
    name: str = "Lienthong"
    #: Right-hand side of Message-IDs; default: the address's domain.
    domain: str = ""
    #: Largest message, inbound and outbound (bytes, base64 included).  A body larger than
    #: fits is refused for e-mail-only offices at submission, never fragmented.
    max_size: int = Field(default=25 * MiB, ge=256 * 1024)

    # -- inbound (aiosmtpd) -------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    #: Port of the inbound server; None: no inbound server.  0 picks a free port.
    smtp_port: int | None = Field(default=None, ge=0, le=65535)
    #: Certificate and key for STARTTLS on the inbound server (PEM files).
    smtp_tls_cert: Path | None = None
    smtp_tls_key: Path | None = None
    #: Refuse MAIL before STARTTLS (needs the certificate).
    smtp_require_tls: bool = False
    #: Seconds an idle inbound connection is kept.
    smtp_timeout: float = Field(default=300.0, gt=0)

    # -- outbound (aiosmtplib through a relay) -----------------------------------------
    #: The relay the hub sends through; empty: the hub sends no e-mail.
    relay_host: str = ""
    relay_port: int = Field(default=587, ge=1, le=65535)
    #: ``starttls`` (required), ``tls`` (implicit, port 465) or ``none`` (a local relay).
    relay_tls: Literal["starttls", "tls", "none"] = "starttls"
    relay_username: str = ""
    relay_password: SecretStr = SecretStr("")
    #: Read the password from this file instead (first line), kept out of hub.toml.
    relay_password_file: Path | None = None
    #: CA bundle for the relay's certificate (default: the system's).
    relay_ca_file: Path | None = None
    relay_timeout: float = Field(default=60.0, gt=0)

    #: Seconds between passes of the sender.
    interval: float = Field(default=5.0, gt=0)
    #: Messages one pass sends at most.
    batch: int = Field(default=50, ge=1)
    #: First retry after this many seconds, doubling up to ``retry_max``.
    retry_base: float = Field(default=60.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    #: A message not sent this many seconds after it was queued fails for good.
    give_up_after: int = Field(default=3 * 86400, ge=1)
    #: Offices that take both transports: seconds an item may wait in the HTTPS mailbox,
    #: per urgency 0-4, before it is also sent by e-mail; 0: never.  E.g.
    #: ``[0, 0, 3600, 900, 900]``: thượng khẩn after an hour, hỏa tốc after 15 minutes.
    fallback_after: list[int] = Field(default_factory=lambda: [NEVER] * 5)

    @field_validator("fallback_after")
    @classmethod
    def _five_urgencies(cls, value: list[int]) -> list[int]:
        if len(value) != 5 or any(v < 0 for v in value):
            raise ValueError("fallback_after lists 5 delays (urgency 0-4) of 0 or more seconds")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EmailSettings:
        if (self.smtp_port is not None or self.relay_host) and "@" not in self.address:
            raise ValueError("the e-mail gateway needs email.address (e.g. lienthong@hub.vn)")
        if (self.smtp_tls_cert is None) != (self.smtp_tls_key is None):
            raise ValueError("give both email.smtp_tls_cert and email.smtp_tls_key")
        if self.smtp_require_tls and self.smtp_tls_cert is None:
            raise ValueError("email.smtp_require_tls needs a certificate")
        return self

    @property
    def inbound(self) -> bool:
        return self.smtp_port is not None

    @property
    def outbound(self) -> bool:
        return bool(self.relay_host)

    @property
    def message_domain(self) -> str:
        return self.domain or self.address.rpartition("@")[2] or "lienthong"

    def password(self) -> str:
        if self.relay_password_file is not None:
            text = self.relay_password_file.read_text(encoding="utf-8")
            return text.splitlines()[0] if text else ""
        return self.relay_password.get_secret_value()
