"""An office's home folder: where the node keeps its keys, state, inbox and outbox.

::

    <home>/
      keystore.json       private keys, Argon2id + AES-256-GCM, mode 0600 (nodes.keystore)
      config.json         organ code, hub URL, numbering rules (not secret)
      node.sqlite3        the local store: outbox, sent, inbox, receipts, registers
      inbox/<packet-id>/  received documents, released only after every check passed,
                          with a metadata.json
      outbox/<name>/      watch folders: files + send.json + .ready are sent, then moved
      outbox/sent/        ... here (or to outbox/failed/ with an error.json)
      archive/<id>/       the archive copy (bản lưu) of every document sent
      spool/              sealed bodies waiting for the hub
      tmp/                downloads in progress (resumed after a restart) and opening
      locks/              advisory locks shared by the daemon and one-shot commands

The passphrase comes from ``LIENTHONG_PASSPHRASE``, a passphrase file, or a prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from protocol.directory import check_organ_code
from protocol.errors import RemoteError

from .errors import NodeError
from .keystore import Keystore, KeystoreError

CONFIG_VERSION: Final = 1
PASSPHRASE_ENV: Final = "LIENTHONG_PASSPHRASE"  # noqa: S105 - a variable name
HOME_ENV: Final = "LIENTHONG_HOME"
NUMBERING_MODES: Final = ("year", "term")


@dataclass
class NodeConfig:
    """What the node needs to know besides its keys; plain JSON, not secret."""

    organ: str
    hub_url: str
    name: str = ""
    #: Outgoing numbers run per document type per calendar ``year`` or per ``term``.
    numbering: str = "year"
    #: First year of a committee term, and its length (nhiệm kỳ 2025-2030: 2025, 5).
    term_start: int = 2025
    term_years: int = 5
    #: The issuing body's abbreviation in notations: ``05-NQ/TU`` has ``TU``.
    abbrev: str = ""
    #: A CA bundle to trust for the hub's TLS certificate (default: the system's).
    ca_file: str = ""
    #: Seconds one mailbox long-poll may wait (the hub caps it at 60).
    poll_wait: int = 25
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> NodeConfig:
        try:
            check_organ_code(self.organ)
        except RemoteError as exc:
            raise NodeError("config_invalid", exc.detail) from None
        if not self.hub_url.startswith(("http://", "https://")):
            raise NodeError("config_invalid", f"hub URL {self.hub_url!r} must be http(s)://")
        if self.numbering not in NUMBERING_MODES:
            raise NodeError("config_invalid", "numbering must be 'year' or 'term'")
        if not 1 <= self.term_years <= 20:
            raise NodeError("config_invalid", "term_years must be from 1 to 20")
        if not 1 <= self.poll_wait <= 60:
            raise NodeError("config_invalid", "poll_wait must be from 1 to 60 seconds")
        return self

    @classmethod
    def from_json(cls, doc: Any) -> NodeConfig:
        if not isinstance(doc, dict):
            raise NodeError("config_invalid", "config.json must hold an object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(doc) - known
        if unknown:
            raise NodeError("config_invalid", f"unknown setting {sorted(unknown)[0]!r}")
        try:
            return cls(**doc).check()
        except TypeError as exc:
            raise NodeError("config_invalid", str(exc)) from None


class _Config(Protocol):
    """What a home's configuration is: a dataclass that checks itself."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def check(self) -> Any: ...


C = TypeVar("C", bound=_Config)


class ConfigHome(Generic[C]):
    """A home folder with a JSON configuration and a keystore (an office's, an auditor's)."""

    #: The configuration file's name, what the folder is, and the command that makes one.
    CONFIG_NAME: ClassVar[str]
    WHAT: ClassVar[str]
    INIT: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()

    @property
    def keystore_path(self) -> Path:
        return self.root / "keystore.json"

    @property
    def config_path(self) -> Path:
        return self.root / self.CONFIG_NAME

    @property
    def initialised(self) -> bool:
        return bool(self.config_path.is_file())

    def parse_config(self, doc: Any) -> C:
        raise NotImplementedError

    def load_config(self) -> C:
        try:
            raw = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NodeError(
                "not_initialised",
                f"{self.root} is not {self.WHAT}: run `{self.INIT} init --home {self.root}`",
            ) from None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise NodeError("config_invalid", f"{self.CONFIG_NAME}: {exc}") from None
        return self.parse_config(doc)

    def save_config(self, config: C) -> None:
        config.check()
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(config), ensure_ascii=False, indent=2) + "\n", "utf-8")
        os.replace(tmp, self.config_path)

    def open_keystore(self, passphrase: bytes) -> Keystore:
        try:
            return Keystore.load(self.keystore_path, passphrase)
        except KeystoreError as exc:
            raise NodeError(exc.code, exc.detail) from None


class Home(ConfigHome[NodeConfig]):
    """Paths of one office's home folder, and its configuration."""

    CONFIG_NAME = "config.json"
    WHAT = "an office home"
    INIT = "lienthong-node"

    def parse_config(self, doc: Any) -> NodeConfig:
        return NodeConfig.from_json(doc)

    @property
    def db_path(self) -> Path:
        return self.root / "node.sqlite3"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def outbox_sent(self) -> Path:
        return self.root / "outbox" / "sent"

    @property
    def outbox_failed(self) -> Path:
        return self.root / "outbox" / "failed"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    def ensure_dirs(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (
            self.inbox,
            self.outbox,
            self.outbox_sent,
            self.outbox_failed,
            self.archive,
            self.spool,
            self.tmp,
            self.locks,
        ):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def lock(self, name: str) -> HomeLock:
        return HomeLock(self.locks / f"{name}.lock")


class HomeLock:
    """An advisory lock (``flock``) shared by the daemon and one-shot commands.

    The daemon and a clerk's ``send`` or ``sync`` may run at the same moment on one home;
    the lock makes them take turns on the outbox, the mailbox and the receipts, so two
    processes never download into the same file or submit one packet twice at once.
    """

    _held: ClassVar[dict[Path, asyncio.Lock]] = {}

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.asynccontextmanager
    async def hold(self, wait: float | None = None) -> AsyncIterator[bool]:
        """Hold the lock; yields False instead of waiting longer than ``wait`` seconds."""
        inner = self._held.setdefault(self.path, asyncio.Lock())
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        try:
            if deadline is None:
                await inner.acquire()
            else:
                await asyncio.wait_for(inner.acquire(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            yield False
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline is not None and loop.time() >= deadline:
                            yield False
                            return
                        await asyncio.sleep(0.05)
                try:
                    yield True
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            inner.release()


def read_passphrase(
    file: Path | None,
    *,
    prompt: Callable[[bool], str] | None,
    confirm: bool = False,
) -> bytes:
    """The passphrase: ``--passphrase-file``, else ``LIENTHONG_PASSPHRASE``, else a prompt."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise NodeError("passphrase_missing", f"cannot read {file}: {exc}") from None
        value = text.rstrip("\r\n")
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV]
    elif prompt is not None:
        value = prompt(confirm)
    else:
        raise NodeError(
            "passphrase_missing",
            f"set {PASSPHRASE_ENV}, give --passphrase-file, or run in a terminal",
        )
    if not value:
        raise NodeError("passphrase_missing", "the passphrase is empty")
    return value.encode("utf-8")
