"""The node's e-mail transport: the same sealed packets and receipts over SMTP and IMAP.

An office configured for e-mail (``lienthong-node init ... --transport email|fallback``,
or the ``email`` object in ``config.json``'s ``extra``) runs an :class:`EmailAgent`, the
ordinary :class:`nodes.agent.Agent` with its transports swapped where needed:

* ``email`` -- the office never talks to the hub over HTTPS after enrolment.  Packets and
  receipts go by SMTP (aiosmtplib) to the hub's gateway address; what the hub sends
  arrives in the office's mailbox and is read over IMAP; directory entries come from the
  local cache and from the signed entries the hub attaches to its messages (verified
  against the pinned authority key like any other).
* ``fallback`` -- HTTPS first; whatever fails with ``hub_unreachable`` goes by SMTP
  instead, and the IMAP mailbox is read too (the hub may fall back to e-mail as well).

Submitting to the gateway directly, the node gets the hub's answer in the SMTP reply: a
250 naming the packet means accepted, a 5xx carries the same stable code an HTTP refusal
would (:func:`protocol.mail.refusal_code`) and is handled the same way (resealed for
``clock_skew`` or a changed key, recorded otherwise); 4xx or no connection leave it queued
with back-off.  Through a plain relay, a 250 only means "handed over": the packet is
``emailed`` until the hub's ``accepted`` receipt comes back by e-mail.

Reading (:class:`ImapMailbox`, stdlib ``imaplib`` in a worker thread): only messages with
a ``Lienthong-Version`` header are looked at -- an office mailbox may be shared with
people; each is parsed strictly and fed to the *same* verify-and-open path as an HTTP
mailbox item (the body is placed where the HTTP download would have put it, so the
download step finds it complete and checks its size and SHA-256 without any network).
Only what has been stored -- published to the inbox, recorded as refused, a receipt
stored -- is then moved to the processed folder (or deleted, by UID, never a blanket
expunge); a message that is not a valid Lienthong message is only flagged
``$LienthongRejected`` and left where it is.  The daemon waits with IMAP IDLE when the
server has it, else polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import os
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiosmtplib
import click

from protocol import mail
from protocol.directory import verify_entry
from protocol.errors import CODES, RemoteError
from protocol.packet import parse_envelope
from protocol.policy import Secrecy
from protocol.receipts import parse_office_receipt

from .agent import Agent
from .core import Backoff, Reporter, RoundReport, Stopped, pid_str, unix_now
from .directory import DirectoryView
from .errors import HubError, HubUnavailable, NodeError
from .home import Home, NodeConfig
from .keystore import Keystore
from .outbox import RETRY_CAP
from .store import ACCEPTED, FAILED, Store

MODES: Final = ("http", "email", "fallback")
#: A packet handed to a plain relay: waiting for the hub's accepted receipt by e-mail.
EMAILED: Final = "emailed"
#: The IMAP keyword set on messages that are not valid Lienthong messages.
REJECTED: Final = "$LienthongRejected"
HEADER_SEARCH: Final = mail.HEADER_VERSION
#: Messages one import reads at most (the rest on the next round).
IMPORT_BATCH: Final = 50
PASSWORD_ENV: Final = "LIENTHONG_MAIL_PASSWORD"  # noqa: S105 - a variable name
#: Refusals that only mean "not by e-mail": with HTTPS as well, the packet waits for it.
NOT_BY_EMAIL: Final = frozenset(
    {"secrecy_not_by_email", "size_limit_exceeded", "transport_not_allowed"}
)


class MailUnavailable(HubUnavailable):
    """The mail server could not be reached (or refused our session): try again later."""

    code = "mail_unreachable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.args = (f"mail_unreachable: {detail}",)


# --- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailUrl:
    """``smtp://``, ``smtp+starttls://``, ``smtps://``, ``imap://``, ``imap+starttls://``,
    ``imaps://`` with an optional percent-encoded user: ``imaps://vanthu%40xa.vn@mail.xa.vn``."""

    protocol: str
    tls: str
    host: str
    port: int
    user: str

    @classmethod
    def parse(cls, text: str, protocol: str) -> MailUrl:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        plain, secure = protocol, protocol + "s"
        tls = {plain: "none", f"{plain}+starttls": "starttls", secure: "tls"}.get(scheme)
        if tls is None or not parts.hostname:
            raise NodeError(
                "config_invalid",
                f"{text!r}: use {plain}://, {plain}+starttls:// or {secure}://host[:port]",
            )
        defaults = {
            "smtp": {"none": 25, "starttls": 587, "tls": 465},
            "imap": {"none": 143, "starttls": 143, "tls": 993},
        }
        try:
            port = parts.port or defaults[protocol][tls]
        except ValueError:
            raise NodeError("config_invalid", f"{text!r}: bad port") from None
        return cls(protocol, tls, parts.hostname, port, unquote(parts.username or ""))

    def __str__(self) -> str:
        scheme = {
            "none": self.protocol,
            "starttls": f"{self.protocol}+starttls",
            "tls": f"{self.protocol}s",
        }[self.tls]
        user = self.user.replace("@", "%40") + "@" if self.user else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass
class EmailConfig:
    """The ``email`` object in ``config.json`` (under ``extra``)."""

    mode: str = "http"
    #: This office's address (the From of what it sends); default: its directory entry's.
    address: str = ""
    #: The hub's gateway address.
    hub_address: str = ""
    #: Where packets and receipts are sent: the hub's gateway itself, or the office's relay.
    smtp: str = ""
    #: The office's mailbox.
    imap: str = ""
    #: Files holding the SMTP and IMAP passwords (else ``LIENTHONG_MAIL_PASSWORD``).
    smtp_password_file: str = ""
    imap_password_file: str = ""
    #: CA bundle for the mail servers' certificates (default: the system's).
    ca_file: str = ""
    folder: str = "INBOX"
    #: Where stored messages go (``after = "move"``), or ``after = "delete"``.
    processed_folder: str = "Lienthong"
    after: str = "move"
    #: Seconds one IMAP IDLE lasts (servers drop idle clients after 30 min), and the
    #: polling interval when the server has no IDLE.
    idle: int = 600
    poll: int = 60
    #: Largest message sent or read (bytes); larger packets are not for e-mail.
    max_size: int = 25 * 1024 * 1024
    timeout: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> EmailConfig:
        if self.mode not in MODES:
            raise NodeError("config_invalid", f"email.mode must be one of {', '.join(MODES)}")
        if self.mode == "http":
            return self
        if "@" not in self.hub_address:
            raise NodeError("config_invalid", "email.hub_address: the hub's gateway address")
        MailUrl.parse(self.smtp, "smtp")
        MailUrl.parse(self.imap, "imap")
        if self.after not in ("move", "delete"):
            raise NodeError("config_invalid", "email.after must be 'move' or 'delete'")
        if self.after == "move" and not self.processed_folder:
            raise NodeError("config_invalid", "email.processed_folder is empty")
        if not 10 <= self.idle <= 1740 or not 1 <= self.poll <= 3600:
            raise NodeError("config_invalid", "email.idle is 10-1740 s, email.poll 1-3600 s")
        return self

    @classmethod
    def from_node(cls, config: NodeConfig) -> EmailConfig:
        doc = config.extra.get("email")
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise NodeError("config_invalid", "config.json: extra.email must be an object")
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise NodeError("config_invalid", f"unknown e-mail setting {sorted(unknown)[0]!r}")
        try:
            return cls(**doc).check()
        except TypeError as exc:
            raise NodeError("config_invalid", str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if not doc["extra"]:
            del doc["extra"]
        return doc

    @property
    def smtp_url(self) -> MailUrl:
        return MailUrl.parse(self.smtp, "smtp")

    @property
    def imap_url(self) -> MailUrl:
        return MailUrl.parse(self.imap, "imap")

    def password(self, which: str) -> str:
        path = self.smtp_password_file if which == "smtp" else self.imap_password_file
        if path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise NodeError("config_invalid", f"cannot read {path}: {exc}") from None
            return text.splitlines()[0] if text else ""
        return os.environ.get(PASSWORD_ENV, "")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file or None)


def email_enabled(config: NodeConfig) -> bool:
    return EmailConfig.from_node(config).mode != "http"


# --- SMTP ----------------------------------------------------------------------------------


class SmtpClient:
    """Hands one message at a time to the configured SMTP server."""

    def __init__(self, cfg: EmailConfig) -> None:
        self.cfg = cfg

    async def send(self, sender: str, data: bytes, *, smtputf8: bool = False) -> str:
        """The server's final reply text; HubError for a refusal, MailUnavailable else."""
        url = self.cfg.smtp_url
        client = aiosmtplib.SMTP(
            hostname=url.host,
            port=url.port,
            use_tls=url.tls == "tls",
            start_tls=url.tls == "starttls",
            tls_context=self.cfg.tls_context() if url.tls != "none" else None,
            timeout=self.cfg.timeout,
        )
        try:
            await client.connect()
            if url.user:
                await client.login(url.user, self.cfg.password("smtp"))
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise MailUnavailable(
                f"{url.host}:{url.port} refused the session: {exc.code} {exc.message}"
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise MailUnavailable(f"cannot connect to {url.host}:{url.port} ({exc})") from None
        try:
            _, message = await client.sendmail(
                sender,
                [self.cfg.hub_address],
                data,
                mail_options=["SMTPUTF8"] if smtputf8 else [],
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            raise _refusal(first.code, first.message) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _refusal(exc.code, exc.message) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailUnavailable(f"{url.host}:{url.port}: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
            client.close()
        return message


def _refusal(code: int, message: str) -> HubError:
    """The hub's refusal as the HTTP path would have raised it: same code, same status."""
    found = mail.refusal_code(message)
    if found is not None and found[0] in CODES:
        name, detail = found
        status = CODES[name].status if code >= 500 else 503
        return HubError(name, status, detail)
    return HubError(f"smtp_{code}", 422 if code >= 500 else 503, message.strip()[:300])


# --- IMAP ---------------------------------------------------------------------------------


class ImapMailbox:
    """One IMAP connection to the office's mailbox (blocking: call it from a thread)."""

    def __init__(self, cfg: EmailConfig) -> None:
        self.cfg = cfg
        self.conn: imaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self._tag = 0

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (imaplib.IMAP4.error, OSError, ssl.SSLError, EOFError) as exc:
            self.close()
            url = self.cfg.imap_url
            raise MailUnavailable(f"IMAP {url.host}:{url.port}: {exc}") from None

    def open(self) -> imaplib.IMAP4:
        if self.conn is not None:
            return self.conn
        url = self.cfg.imap_url
        with self._errors():
            if url.tls == "tls":
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    url.host, url.port, ssl_context=self.cfg.tls_context(), timeout=self.cfg.timeout
                )
            else:
                conn = imaplib.IMAP4(url.host, url.port, timeout=self.cfg.timeout)
                if url.tls == "starttls":
                    conn.starttls(ssl_context=self.cfg.tls_context())
            self.conn = conn
            _login(conn, url.user, self.cfg.password("imap"))
            typ, data = conn.capability()
            self.capabilities = frozenset(
                str(data[0], "ascii", "replace").upper().split() if data and data[0] else ()
            )
            typ, data = conn.select(_quote(self.cfg.folder))
            if typ != "OK":
                raise imaplib.IMAP4.error(f"cannot open {self.cfg.folder}: {data!r}")
        return conn

    def fetch(self, limit: int = IMPORT_BATCH) -> list[tuple[bytes, bytes]]:
        """Lienthong messages not yet rejected: ``(uid, RFC 5322 bytes)``, oldest first."""
        conn = self.open()
        with self._errors():
            conn.noop()  # lets the server tell us about new messages
            typ, data = conn.uid("SEARCH", "UNKEYWORD", REJECTED, "HEADER", HEADER_SEARCH, '""')
            if typ != "OK":
                raise imaplib.IMAP4.error(f"SEARCH failed: {data!r}")
            uids: list[bytes] = bytes(data[0] or b"").split()[:limit]
            out: list[tuple[bytes, bytes]] = []
            for uid in uids:
                typ, parts = conn.uid("FETCH", uid.decode("ascii"), "(BODY.PEEK[])")
                for part in parts or []:
                    if isinstance(part, tuple) and len(part) == 2:
                        out.append((uid, bytes(part[1])))
                        break
            return out

    def settle(self, done: Sequence[bytes], rejected: Sequence[bytes]) -> None:
        """Move (or delete) what was stored; flag what is not ours."""
        conn = self.open()
        with self._errors():
            if rejected:
                conn.uid("STORE", b",".join(rejected).decode(), "+FLAGS", f"({REJECTED})")
            if not done:
                return
            uids = b",".join(done).decode()
            if self.cfg.after == "move":
                folder = _quote(self.cfg.processed_folder)
                conn.create(folder)  # NO when it exists: fine
                if "MOVE" in self.capabilities:
                    typ, data = conn.uid("MOVE", uids, folder)
                    if typ != "OK":
                        raise imaplib.IMAP4.error(f"MOVE failed: {data!r}")
                    return
                typ, data = conn.uid("COPY", uids, folder)
                if typ != "OK":
                    raise imaplib.IMAP4.error(f"COPY failed: {data!r}")
            conn.uid("STORE", uids, "+FLAGS", "(\\Deleted)")
            if "UIDPLUS" in self.capabilities:
                # Only these messages: a plain EXPUNGE would also remove whatever a person
                # had marked deleted in a shared mailbox.
                conn.uid("EXPUNGE", uids)

    @property
    def can_idle(self) -> bool:
        return "IDLE" in self.capabilities

    def idle(self, timeout: float) -> bool:
        """Wait (IMAP IDLE, RFC 2177) until the server reports a change or ``timeout``.

        True when something happened.  After a timeout the connection is closed (a socket
        that timed out mid-read cannot be read again) and reopened on the next use.
        """
        conn = self.open()
        self._tag += 1
        tag = f"LTI{self._tag}".encode()
        with self._errors():
            conn.send(tag + b" IDLE\r\n")
            line = conn.readline()
            if not line.startswith(b"+"):
                raise imaplib.IMAP4.error(f"IDLE refused: {line[:200]!r}")
            sock = conn.socket()
            sock.settimeout(timeout)
            try:
                line = conn.readline()
            except TimeoutError:
                self.close()
                return False
            finally:
                if self.conn is not None:
                    sock.settimeout(self.cfg.timeout)
            if not line:
                raise EOFError("the IMAP server closed the connection")
            conn.send(b"DONE\r\n")
            while not line.startswith(tag):
                line = conn.readline()
                if not line:
                    raise EOFError("the IMAP server closed the connection")
        return True

    def interrupt(self) -> None:
        """Wake a thread blocked in :meth:`idle` (from another thread): drop the socket."""
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.socket().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.logout()
            with contextlib.suppress(Exception):
                conn.shutdown()


def _login(conn: imaplib.IMAP4, user: str, password: str) -> None:
    """SASL PLAIN (RFC 4616) when offered: UTF-8 user names and passwords -- a
    Vietnamese passphrase -- which imaplib's LOGIN cannot send; else LOGIN (ASCII)."""
    if "AUTH=PLAIN" in {c.upper() for c in conn.capabilities}:
        token = b"\0" + user.encode() + b"\0" + password.encode()
        conn.authenticate("PLAIN", lambda _challenge: token)
        return
    if not (user.isascii() and password.isascii()):
        raise imaplib.IMAP4.error("the server offers no AUTH=PLAIN for a non-ASCII login")
    conn.login(user, password)


def _quote(name: str) -> str:
    """A mailbox name as an IMAP quoted string (modified UTF-7 is left to ASCII names)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the agent -----------------------------------------------------------------------------


class EmailAgent(Agent):
    """The agent of an office that uses e-mail (``email`` only, or as ``fallback``)."""

    def __init__(
        self,
        home: Home,
        config: NodeConfig,
        store: Store,
        keystore: Keystore,
        reporter: Reporter | None = None,
    ) -> None:
        super().__init__(home, config, store, keystore, reporter)
        self.email = EmailConfig.from_node(config)
        if self.email.mode == "http":
            raise NodeError("config_invalid", "this office does not use e-mail")
        self.smtp = SmtpClient(self.email)
        #: HTTPS failed in this round: what is left goes by e-mail (fallback mode).
        self._https_down = self.email.mode == "email"
        self._smtp_down = False
        if self.email.mode == "email":
            # No HTTPS after enrolment: entries from the cache and from the hub's messages.
            self.directory = DirectoryView(store, keystore.authority, None)

    # -- which transport ---------------------------------------------------------------

    @property
    def by_email(self) -> bool:
        return self.email.mode == "email" or self._https_down

    def _down(self) -> None:
        self._https_down = True

    @property
    def own_address(self) -> str:
        if self.email.address:
            return self.email.address
        entry = self.directory.cached(self.organ)
        if entry is None or not entry.email:
            raise NodeError("config_invalid", "set email.address: the directory has none")
        return entry.email

    def _sender(self) -> tuple[str, str]:
        return self.own_address, self.config.name or self.organ

    def _domain(self) -> str:
        return self.own_address.rpartition("@")[2] or "lienthong"

    # -- the agent's steps, each falling back to e-mail --------------------------------

    async def sync(self) -> RoundReport:
        self._https_down = self.email.mode == "email"
        return await super().sync()

    async def outbox_pass(self, report: RoundReport, *, everything: bool = False) -> None:
        self._https_down = self.email.mode == "email"
        await super().outbox_pass(report, everything=everything)

    async def check_identity(self) -> None:
        if self.by_email:
            return  # pinned at enrolment; nothing to ask the hub over e-mail
        try:
            await super().check_identity()
        except HubUnavailable:
            self._down()

    async def check_checkpoint(self) -> int | None:
        if self.by_email:
            return None
        return await super().check_checkpoint()

    async def refresh_directory(self, *, every: int = 3600) -> bool:
        try:
            return await super().refresh_directory(every=every)
        except HubUnavailable:
            return False

    async def refresh_accepted_receipts(self, limit: int = 20) -> None:
        if self.by_email:
            return
        try:
            await super().refresh_accepted_receipts(limit)
        except HubUnavailable:
            self._down()

    async def submit_outbox(
        self, *, only: str | None = None, everything: bool = False
    ) -> RoundReport:
        if not self.by_email:
            try:
                return await super().submit_outbox(only=only, everything=everything)
            except HubUnavailable:
                self._down()
        return await self._email_outbox(only=only, everything=everything)

    async def _submit_one(self, row: Any, report: RoundReport) -> None:
        if not self.by_email:
            try:
                await super()._submit_one(row, report)
                return
            except HubUnavailable:
                self._down()
                row = self.store.get_sent(row["packet_id"])
        await self._email_packet(row, report)

    async def post_receipts(self, report: RoundReport | None = None) -> RoundReport:
        if not self.by_email:
            try:
                return await super().post_receipts(report)
            except HubUnavailable:
                self._down()
        return await self._email_receipts(report)

    async def drain_mailbox(self, report: RoundReport, rounds: int = 20) -> None:
        if self.email.mode != "email":
            try:
                await super().drain_mailbox(report, rounds)
            except HubUnavailable:
                self._down()
        for _ in range(rounds):
            if not await self.import_mail(report):
                return

    # -- sending ----------------------------------------------------------------------------

    async def _email_outbox(self, *, only: str | None, everything: bool) -> RoundReport:
        report = RoundReport()
        self._smtp_down = False
        rows = self.store.outbox_due(all_due=everything or only is not None)
        if only is not None:
            rows = [r for r in rows if r["packet_id"] == only]
        for row in rows:
            if self._smtp_down:
                break
            await self._email_packet(row, report)
        report.queued = self.store.outbox_count()
        return report

    def _later(self, row: Any, code: str, detail: str, report: RoundReport) -> None:
        attempts = int(row["attempts"]) + 1
        self.store.update_sent(
            row["packet_id"],
            attempts=attempts,
            next_attempt=unix_now() + min(RETRY_CAP, 2**attempts),
            error_code=code,
            error_detail=detail,
        )
        report.errors.append({"packet_id": row["packet_id"], "code": code, "detail": detail})

    async def _not_by_email(self, row: Any, code: str, detail: str, report: RoundReport) -> None:
        """A packet e-mail cannot carry: it waits for HTTPS, or fails in e-mail mode."""
        if self.email.mode == "fallback":
            self._later(row, code, f"{detail}; it waits for HTTPS", report)
            return
        await self._refused(row, HubError(code, CODES[code].status, detail), report)

    async def _email_packet(self, row: Any, report: RoundReport) -> None:
        pid = row["packet_id"]
        env = parse_envelope(bytes(row["envelope"]))
        secrecy = Secrecy(env.routing.secrecy)
        if secrecy != Secrecy.NONE:
            await self._not_by_email(
                row, "secrecy_not_by_email", f"{secrecy.label} documents never go by e-mail", report
            )
            return
        if not mail.fits_in_mail(len(env.raw), int(row["body_size"]), self.email.max_size):
            await self._not_by_email(
                row,
                "size_limit_exceeded",
                f"a body of {row['body_size']} bytes is too large for e-mail "
                f"(messages of at most {self.email.max_size} bytes)",
                report,
            )
            return
        body = await asyncio.to_thread(Path(row["body_path"]).read_bytes)
        msg = mail.packet_message(
            env,
            body,
            sender=self._sender(),
            recipient=(self.email.hub_address, "Lienthong"),
            domain=self._domain(),
            at=unix_now(),
        )
        data = mail.to_bytes(msg)
        try:
            reply = await self.smtp.send(self.own_address, data, smtputf8=not data.isascii())
        except MailUnavailable as exc:
            self._smtp_down = True
            self._later(row, exc.code, exc.detail, report)
            return
        except HubError as exc:
            if exc.transient:
                self._later(row, exc.code, exc.detail, report)
            elif exc.code in NOT_BY_EMAIL and self.email.mode == "fallback":
                self._later(row, exc.code, f"{exc.detail}; it waits for HTTPS", report)
            else:
                await self._refused(row, exc, report)
            return
        if mail.accepted_packet(reply) == env.packet_id:
            await self._accepted(row, {"state": ACCEPTED, "accepted_at": unix_now()}, report)
            return
        # A relay took it: the hub's accepted receipt will come back by e-mail.
        self.store.update_sent(pid, state=EMAILED, error_code=None, error_detail=None)
        report.sent.append(pid)
        self.report.event("send.accepted_noreceipt", packet=pid)

    async def _email_receipts(self, report: RoundReport | None) -> RoundReport:
        report = report or RoundReport()
        self._smtp_down = False
        for row in self.store.queued_receipts(limit=500):
            parsed = parse_office_receipt(bytes(row["raw"]))
            data = mail.to_bytes(
                mail.receipt_message(
                    parsed,
                    sender=self._sender(),
                    recipient=(self.email.hub_address, "Lienthong"),
                    domain=self._domain(),
                    at=unix_now(),
                )
            )
            try:
                await self.smtp.send(self.own_address, data, smtputf8=not data.isascii())
            except MailUnavailable as exc:
                self._smtp_down = True
                report.errors.append({"code": exc.code, "detail": exc.detail})
                break
            except HubError as exc:
                if exc.transient:
                    report.errors.append({"code": exc.code, "detail": exc.detail})
                    continue
                self.store.mark_receipt(bytes(row["digest"]), "failed", exc.code, exc.detail)
                self._undo_own(row)
                report.errors.append(
                    {"packet_id": row["packet_id"], "code": exc.code, "detail": exc.detail}
                )
                continue
            self.store.mark_receipt(bytes(row["digest"]), "posted")
            report.receipts_out += 1
            if row["organ"] != self.organ:  # our 13 about a recipient's delivery
                self._update_delivery(row["packet_id"], row["organ"])
        return report

    # -- receiving --------------------------------------------------------------------------

    def _cache_entries(self, entries: Sequence[bytes]) -> None:
        """Entries the hub attached: kept only if the pinned authority signed them."""
        for raw in entries:
            try:
                signed = verify_entry(raw, self.keystore.authority)
            except RemoteError:
                continue
            e = signed.entry
            self.store.put_entry(e.organ, e.serial, raw, parent=e.parent, name=e.name, role=e.role)

    async def import_mail(self, report: RoundReport, box: ImapMailbox | None = None) -> int:
        """Read, verify and store what the mailbox holds; returns how many were read."""
        own = box is None
        mailbox = box or ImapMailbox(self.email)
        try:
            fetched = await asyncio.to_thread(mailbox.fetch, IMPORT_BATCH)
            done: list[bytes] = []
            rejected: list[bytes] = []
            for uid, data in fetched:
                try:
                    item = mail.parse_message(data, max_size=self.email.max_size)
                except RemoteError as exc:
                    rejected.append(uid)
                    report.errors.append({"code": exc.code, "detail": exc.detail})
                    continue
                if await self._import(item, report):
                    done.append(uid)
            if done or rejected:
                await asyncio.to_thread(mailbox.settle, done, rejected)
            return len(fetched)
        finally:
            if own:
                await asyncio.to_thread(mailbox.close)

    async def _import(self, item: mail.MailItem, report: RoundReport) -> bool:
        if isinstance(item, mail.PacketMail):
            self._cache_entries(item.entries)
            env = item.envelope
            pid = pid_str(env.packet_id)
            if self.store.get_inbox(pid) is not None:
                return True  # the same packet twice (by e-mail and HTTPS, or resent)
            # Where the HTTP download would have put it: the download step then finds it
            # complete and checks its size and SHA-256 without asking the hub.
            part = self.home.tmp / f"{pid}.body"
            await asyncio.to_thread(_write, part, item.body)
            doc = {"kind": "envelope", "packet_id": pid, "envelope": _b64(env.raw)}
            return await self._receive(doc, report)
        if isinstance(item, mail.ReceiptMail):
            self._cache_entries(item.entries)
            r = item.receipt.receipt
            doc = {"kind": "receipt", "receipt": _b64(item.receipt.raw), "signer": r.signer}
            return await self._receipt_in(doc, report)
        raw = item.receipt.container.raw
        ok = await self._hub_receipt_in({"kind": "hub_receipt", "receipt": _b64(raw)}, report)
        if item.receipt.receipt.kind == "accepted":
            self._accepted_by_email(item.receipt.receipt.packet_id, raw, report)
        return ok

    def _accepted_by_email(self, packet_id: bytes, raw: bytes, report: RoundReport) -> None:
        """The hub's accepted receipt for a packet we e-mailed: the packet is accepted."""
        pid = pid_str(packet_id)
        row = self.store.get_sent(pid)
        if row is None or row["hub_receipt"] is not None or row["state"] == FAILED:
            return
        fields: dict[str, Any] = {}
        index = self._check_accepted(pid, bytes(row["envelope"]), raw, fields)
        if index is None:
            self.store.update_sent(pid, **fields)
            return
        fields.update(state=ACCEPTED, error_code=None, error_detail=None)
        self.store.update_sent(pid, **fields)
        if row["body_path"]:
            Path(row["body_path"]).unlink(missing_ok=True)
            self.store.update_sent(pid, body_path=None)
        if row["state"] != ACCEPTED:
            report.sent.append(pid)
        self.report.event("send.accepted", packet=pid, index=index)

    # -- the daemon ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, backoff_cap: float = 30.0) -> None:
        """The daemon: the outbox loop, the IMAP loop and (with HTTPS) the mailbox loop."""
        self.report.event("run.started", organ=self.organ, hub=self.email.hub_address)
        self._stop = stop
        hub_up = asyncio.Event()
        loops = [
            asyncio.create_task(self._outbox_loop(stop, hub_up, backoff_cap), name="outbox"),
            asyncio.create_task(self._imap_loop(stop, backoff_cap), name="imap"),
        ]
        if self.email.mode != "email":
            loops.append(
                asyncio.create_task(self._mailbox_loop(stop, hub_up, backoff_cap), name="mailbox")
            )
        try:
            await stop.wait()
            _done, pending = await asyncio.wait(loops, timeout=20.0)
            for task in pending:
                task.cancel()
        finally:
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError, Stopped):
                    await task
            self.report.event("run.stopped")

    async def _imap_loop(self, stop: asyncio.Event, cap: float) -> None:
        backoff = Backoff(cap=cap)
        box = ImapMailbox(self.email)
        try:
            while not stop.is_set():
                try:
                    report = RoundReport()
                    async with self.home.lock("mailbox").hold():
                        read = await self.import_mail(report, box)
                    if report.received or report.refused or report.receipts_in:
                        async with self.home.lock("receipts").hold():
                            await self.post_receipts()
                    backoff.reset()
                    if read:
                        continue  # more may be waiting
                    await self._wait_for_mail(box, stop)
                except (asyncio.CancelledError, Stopped):
                    return
                except Exception as exc:
                    delay = backoff.next()
                    self._unreachable(backoff, exc, delay)
                    await asyncio.to_thread(box.close)
                    await self._pause(stop, delay)
        finally:
            box.interrupt()
            await asyncio.to_thread(box.close)

    async def _wait_for_mail(self, box: ImapMailbox, stop: asyncio.Event) -> None:
        if not box.can_idle:
            await self._pause(stop, float(self.email.poll))
            return
        waiter = asyncio.ensure_future(asyncio.to_thread(box.idle, float(self.email.idle)))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not waiter.done():
                box.interrupt()  # the worker thread returns at once
                with contextlib.suppress(Exception):
                    await waiter
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".mail")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def make_agent(
    home: Home,
    config: NodeConfig,
    store: Store,
    keystore: Keystore,
    reporter: Reporter | None = None,
) -> Agent:
    """The agent this office's configuration asks for."""
    if email_enabled(config):
        return EmailAgent(home, config, store, keystore, reporter)
    return Agent(home, config, store, keystore, reporter)


# --- the command line: ``lienthong-node init`` options ---------------------------------------

_CLI_KEY: Final = "lienthong_email"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_CLI_KEY, {})[param.name] = value
    return value


def init_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The e-mail options of ``lienthong-node init`` (read back by :func:`init_extra`)."""
    options = [
        click.option(
            "--transport",
            type=click.Choice(MODES),
            default=None,
            expose_value=False,
            callback=_remember,
            help="http (default); email: SMTP and IMAP only after enrolment; "
            "fallback: HTTPS, and e-mail when the hub cannot be reached.",
        ),
        click.option(
            "--email",
            "address",
            expose_value=False,
            callback=_remember,
            help="This office's mailbox address (default: its directory entry's).",
        ),
        click.option(
            "--hub-email",
            "hub_address",
            expose_value=False,
            callback=_remember,
            help="The hub's gateway address, e.g. lienthong@hub.tinhuy.vn.",
        ),
        click.option(
            "--smtp",
            expose_value=False,
            callback=_remember,
            help="Where to send: smtp[s|+starttls]://[user@]host[:port] "
            "(the hub's gateway, or the office's relay).",
        ),
        click.option(
            "--imap",
            expose_value=False,
            callback=_remember,
            help="The office's mailbox: imap[s|+starttls]://user@host[:port].",
        ),
        click.option(
            "--mail-password-file",
            type=click.Path(path_type=Path, dir_okay=False),
            expose_value=False,
            callback=_remember,
            help=f"File with the mailbox password (else {PASSWORD_ENV}).",
        ),
        click.option(
            "--mail-ca-file",
            type=click.Path(path_type=Path, dir_okay=False),
            expose_value=False,
            callback=_remember,
            help="CA bundle for the mail servers' certificates.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def init_extra() -> dict[str, Any]:
    """``{"email": {...}}`` for config.json's ``extra`` from the init options (checked)."""
    given: dict[str, Any] = click.get_current_context().meta.get(_CLI_KEY, {})
    mode = given.get("transport") or "http"
    if mode == "http":
        return {}
    password = given.get("mail_password_file")
    ca_file = given.get("mail_ca_file")
    cfg = EmailConfig(
        mode=mode,
        address=given.get("address") or "",
        hub_address=given.get("hub_address") or "",
        smtp=given.get("smtp") or "",
        imap=given.get("imap") or "",
        smtp_password_file=str(password.absolute()) if password else "",
        imap_password_file=str(password.absolute()) if password else "",
        ca_file=str(ca_file.absolute()) if ca_file else "",
    ).check()
    return {"email": cfg.to_json()}
