"""An auditor's home folder: keys, settings and the local audit store.

::

    <home>/
      keystore.json     the auditor's private keys, Argon2id + AES-256-GCM, mode 0600
                        (:mod:`nodes.keystore`), with the pinned directory authority
                        key and hub key
      audit.json        hub URL, organ code, witnesses and threshold, holidays (not secret)
      audit.sqlite3     accepted checkpoints, the mirror of the log, alarms
                        (:mod:`nodes.auditstore`)
      proofs/           audit proofs saved by ``trace`` (:mod:`protocol.evidence`)
      locks/            advisory locks shared by ``monitor`` and one-shot commands

An auditor enrols like an office (``lienthong-hub enroll CODE --role auditor`` gives the
one-time token), so its keys are in the directory and its bearer token carries the
``auditor`` role: it reads the log and delivery metadata, never a document body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from protocol.directory import check_organ_code
from protocol.errors import RemoteError

from .errors import NodeError
from .home import ConfigHome, HomeLock

CONFIG_VERSION: Final = 1
AUDIT_HOME_ENV: Final = "LIENTHONG_AUDIT_HOME"


@dataclass
class AuditConfig:
    """What the auditor's tools need besides keys; plain JSON, not secret."""

    organ: str
    hub_url: str
    name: str = ""
    #: The log's origin line (``lienthong.hub/<hub name>``), learnt at init.
    origin: str = ""
    ca_file: str = ""
    #: Organ codes whose witness cosignatures a checkpoint must carry ...
    witnesses: list[str] = field(default_factory=list)
    #: ... at least this many of them (k of n).
    threshold: int = 0
    #: Cosign every checkpoint this auditor verified (auditors are witnesses too).
    cosign: bool = True
    #: Public holidays (YYYY-MM-DD) the lateness rules skip, besides weekends.
    holidays: list[str] = field(default_factory=list)
    version: int = CONFIG_VERSION

    def check(self) -> AuditConfig:
        try:
            check_organ_code(self.organ)
            for code in self.witnesses:
                check_organ_code(code)
        except RemoteError as exc:
            raise NodeError("config_invalid", exc.detail) from None
        if not self.hub_url.startswith(("http://", "https://")):
            raise NodeError("config_invalid", f"hub URL {self.hub_url!r} must be http(s)://")
        if not 0 <= self.threshold <= len(self.witnesses):
            raise NodeError(
                "config_invalid",
                f"threshold {self.threshold} must be from 0 to the {len(self.witnesses)} witnesses",
            )
        self.holiday_dates()
        return self

    def holiday_dates(self) -> frozenset[date]:
        try:
            return frozenset(date.fromisoformat(d) for d in self.holidays)
        except ValueError as exc:
            raise NodeError("config_invalid", f"holidays: {exc}") from None

    @classmethod
    def from_json(cls, doc: Any) -> AuditConfig:
        if not isinstance(doc, dict):
            raise NodeError("config_invalid", "audit.json must hold an object")
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise NodeError("config_invalid", f"unknown setting {sorted(unknown)[0]!r}")
        try:
            return cls(**doc).check()
        except TypeError as exc:
            raise NodeError("config_invalid", str(exc)) from None


class AuditHome(ConfigHome[AuditConfig]):
    """Paths of one auditor's home folder, and its configuration."""

    CONFIG_NAME = "audit.json"
    WHAT = "an auditor's home"
    INIT = "lienthong-audit"

    def parse_config(self, doc: Any) -> AuditConfig:
        return AuditConfig.from_json(doc)

    @property
    def db_path(self) -> Path:
        return self.root / "audit.sqlite3"

    @property
    def proofs(self) -> Path:
        return self.root / "proofs"

    def ensure_dirs(self) -> None:
        for folder in (self.root, self.proofs, self.root / "locks"):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def public_keys(self) -> dict[str, Any]:
        """The keystore's clear part (pinned keys), readable without the passphrase."""
        try:
            doc = json.loads(self.keystore_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NodeError("keystore_missing", f"no keystore at {self.keystore_path}") from None
        except ValueError:
            raise NodeError("keystore_damaged", "the keystore is not valid JSON") from None
        if not isinstance(doc, dict):
            raise NodeError("keystore_damaged", "not a Lienthong keystore")
        return doc

    def lock(self, name: str) -> HomeLock:
        return HomeLock(self.root / "locks" / f"{name}.lock")
