"""Real mail servers for the e-mail tests: an aiosmtpd relay, and Dovecot for IMAP.

* :class:`Relay` -- aiosmtpd on a free port, in the running event loop (in-process
  tests) or in a thread of its own (:class:`ThreadedRelay`, for tests that drive real
  processes).  It is the relay the hub sends through: it keeps what it received, can be
  stopped and started again on the same port (the relay "down for a while"), can answer
  with a chosen refusal, and can deliver each message into a Dovecot mailbox by IMAP
  APPEND, as a mail server's delivery agent would.
* :class:`Dovecot` -- Debian's ``dovecot-imapd``, started as an unprivileged instance with
  its own generated configuration on a free port, Maildirs in a temporary folder and
  users in a passwd-file; never the system service.  ``scripts/ensure-dovecot.sh``
  installs the package when it is missing; :func:`dovecot_binary` says why it cannot run.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "scripts" / "ensure-dovecot.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the relay -------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class Relay:
    """An SMTP relay the hub sends through, in the current event loop."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    #: Set to an SMTP reply ("451 ..." or "550 ...") to refuse every message with it.
    refuse: str | None = None
    #: Called with each accepted message (e.g. delivery into an IMAP mailbox).
    deliver: Callable[[Received], Awaitable[None]] | None = None
    #: A server certificate: offered with STARTTLS, or from the first byte (``implicit``).
    tls: ssl.SSLContext | None = None
    implicit: bool = False
    #: Require AUTH (PLAIN/LOGIN, after TLS) with this (user, password).
    login: tuple[str, str] | None = None
    _server: asyncio.Server | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.login is not None
        ok = (
            isinstance(data, LoginPassword)
            and (
                data.login.decode(),
                data.password.decode(),
            )
            == self.login
        )
        return AuthResult(success=ok, handled=False, auth_data=data)

    async def start(self) -> Relay:
        loop = asyncio.get_running_loop()
        starttls = None if self.implicit else self.tls

        def factory() -> SMTP:
            return SMTP(
                self,
                hostname="relay.lienthong.test",
                enable_SMTPUTF8=True,
                tls_context=starttls,
                require_starttls=starttls is not None,
                auth_required=self.login is not None,
                authenticator=self._authenticate if self.login is not None else None,
                loop=loop,
            )

        ssl_ctx = self.tls if self.implicit else None
        self._server = await loop.create_server(factory, "127.0.0.1", self.port, ssl=ssl_ctx)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse is not None:
            return self.refuse
        got = Received(
            str(envelope.mail_from), list(envelope.rcpt_tos), envelope.original_content or b""
        )
        self.messages.append(got)
        if self.deliver is not None:
            await self.deliver(got)
        return "250 2.0.0 queued"

    def for_address(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]


class ThreadedRelay:
    """A :class:`Relay` running in a thread with its own loop (for process tests)."""

    def __init__(self, deliver: Callable[[Received], None] | None = None) -> None:
        self._deliver = deliver
        self.relay = Relay(deliver=self._in_thread if deliver else None)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def _in_thread(self, got: Received) -> None:
        assert self._deliver is not None
        await asyncio.to_thread(self._deliver, got)

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def start(self) -> ThreadedRelay:
        self._call(self.relay.start())
        return self

    def stop(self) -> None:
        self._call(self.relay.stop())

    @property
    def port(self) -> int:
        return self.relay.port

    @property
    def messages(self) -> list[Received]:
        return list(self.relay.messages)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# --- Dovecot -----------------------------------------------------------------------------


def dovecot_binary() -> tuple[str | None, str]:
    """The dovecot executable (installing the package if needed), or None and why not."""
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found:
        return found, ""
    result = subprocess.run(
        ["bash", str(ENSURE)], capture_output=True, text=True, timeout=900, check=False
    )
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found:
        return found, ""
    return None, (result.stdout + result.stderr).strip()[-500:] or "dovecot is not installed"


_CONFIG = """\
# Generated for one test run: an unprivileged Dovecot, IMAP only, nothing shared with
# the system's instance (its own base_dir, state_dir, log and port).
base_dir = {root}/run
state_dir = {root}/state
instance_name = lienthong-test-{port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_uid = {uid}
mail_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
service pop3-login {{
  chroot =
}}
service submission-login {{
  chroot =
}}
service anvil {{
  chroot =
}}
"""


class Dovecot:
    """One Dovecot instance with passwd-file users; ``with Dovecot(binary) as d``."""

    def __init__(self, binary: str, tls: tuple[Path, Path] | None = None) -> None:
        self.binary = binary
        self.port = free_port()
        #: With ``tls`` (certificate, key): STARTTLS on ``port`` and IMAPS on ``imaps_port``.
        self.tls = tls
        self.imaps_port = free_port() if tls else 0
        # Not under pytest's tmp_path: that is private to us (0700), and when the tests run
        # as root Dovecot runs as "nobody", which must reach its folders.
        self.root = Path(tempfile.mkdtemp(prefix="lienthong-dovecot-"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam("nobody")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
            self.user = "nobody"
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.user = pwd.getpwuid(self.uid).pw_name
        self.users: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def add_user(self, address: str, password: str) -> None:
        self.users[address] = password
        home = self.root / "mail" / address
        home.mkdir(parents=True, exist_ok=True)
        lines = [
            f"{user}:{{PLAIN}}{pw}:{self.uid}:{self.gid}::{self.root / 'mail' / user}::"
            for user, pw in self.users.items()
        ]
        (self.root / "passwd").write_text("\n".join(lines) + "\n")
        self._own()

    def _own(self) -> None:
        if os.geteuid() == 0:
            for path in [self.root, *self.root.rglob("*")]:
                # A running Dovecot writes and renames its own files meanwhile (e.g.
                # run/auth-token-secret.dat.tmp): one gone needs no owner.
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, self.uid, self.gid)

    def start(self) -> Dovecot:
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(exist_ok=True)
        self.root.chmod(0o755)
        group = "nogroup"
        with contextlib.suppress(KeyError, ImportError):
            import grp

            group = grp.getgrgid(self.gid).gr_name
        config = self.root / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root,
                port=self.port,
                imaps_port=self.imaps_port,
                ssl=self._ssl(),
                user=self.user,
                group=group,
                uid=self.uid,
                gid=self.gid,
            )
        )
        if not (self.root / "passwd").exists():
            (self.root / "passwd").write_text("")
        self._own()
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        self.proc = subprocess.Popen(
            [self.binary, "-F", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **kwargs,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"dovecot did not listen on {self.port}: {self.log()}")

    def _ssl(self) -> str:
        if self.tls is None:
            return "ssl = no"
        cert, key = self.tls
        for name, path in (("cert.pem", cert), ("key.pem", key)):
            shutil.copyfile(path, self.root / name)
        return (
            f"ssl = yes\nssl_cert = <{self.root / 'cert.pem'}\nssl_key = <{self.root / 'key.pem'}"
        )

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test does with a mailbox ---------------------------------------------

    @contextlib.contextmanager
    def imap(self, address: str) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            token = b"\0" + address.encode() + b"\0" + self.users[address].encode()
            conn.authenticate("PLAIN", lambda _challenge: token)  # UTF-8 passwords
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, address: str, data: bytes, folder: str = "INBOX") -> None:
        """Deliver a message into a mailbox, as a delivery agent would."""
        with self.imap(address) as conn:
            typ, detail = conn.append(folder, None, None, data)
            assert typ == "OK", detail

    def count(self, address: str, folder: str = "INBOX") -> int:
        with self.imap(address) as conn:
            typ, data = conn.select(folder, readonly=True)
            if typ != "OK":
                return 0
            return int(data[0] or 0)

    def fetch_all(self, address: str, folder: str = "INBOX") -> list[bytes]:
        with self.imap(address) as conn:
            typ, _ = conn.select(folder, readonly=True)
            if typ != "OK":
                return []
            typ, data = conn.uid("SEARCH", "ALL")
            out = []
            for uid in (data[0] or b"").split():
                typ, parts = conn.uid("FETCH", uid, "(BODY.PEEK[])")
                for part in parts:
                    if isinstance(part, tuple):
                        out.append(part[1])
            return out


# --- certificates ------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files in ``folder``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lienthong test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
