"""Real processes for end-to-end tests: a ``lienthong-hub serve`` and ``lienthong-node`` homes.

Everything goes through the installed console scripts, as an office would run them: the
hub on the embedded default (SQLite and a blob folder in a temporary directory) on a free
port, organs created with ``lienthong-hub enroll`` (or, to save the CLI's start-up time,
with the admin API an admin organ enrolled that way is allowed to use), offices set up
with ``lienthong-node init``.  Every process gets its own process group and is stopped
(SIGTERM, then SIGKILL) even when a test fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import signed
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey

BIN = Path(sys.executable).parent
HUB_EXE = str(BIN / "lienthong-hub")
NODE_EXE = str(BIN / "lienthong-node")
PASSPHRASE = "mật khẩu thử nghiệm 2025"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["LANG"] = "C.UTF-8"
    env.pop("LC_ALL", None)
    env.update(extra)
    return env


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unique(prefix: str) -> str:
    """An organ code unique to this test (codes are [0-9A-Za-z.-_/], up to 64)."""
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> Any:
        return json.loads(self.stdout)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> int:
    """SIGTERM the process group, SIGKILL it if it does not stop; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)


class Hub:
    """A hub data folder and, once started, its ``serve`` process."""

    def __init__(self, root: Path) -> None:
        self.data = root / "hub"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread()
        self.hybrid = False
        self._admin: tuple[str, SigningPrivateKey, str] | None = None
        self.scheme = "http"
        #: The CA the harness trusts for an https hub's admin API.
        self.ca_file: Path | None = None
        #: Fingerprints ``init`` printed: {"hub key": ..., "directory authority": ...}.
        self.fingerprints: dict[str, str] = {}

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [HUB_EXE, *args], capture_output=True, text=True, env=clean_env(), timeout=120
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    def init(self, *, hybrid: bool = False, database_url: str | None = None) -> Hub:
        self.hybrid = hybrid
        extra = ["--database-url", database_url] if database_url else []
        out = self.cli("init", "--data", str(self.data), *(["--hybrid"] if hybrid else []), *extra)
        for line in out.splitlines():
            name, _, value = line.partition(":")
            if name in ("hub key", "directory authority"):
                self.fingerprints[name] = value.strip()
        return self

    def start(self, port: int = 0, timeout: float = 60, **settings: str) -> Hub:
        """Serve on ``port`` (0: a free one); ``settings`` become LIENTHONG_<NAME> variables."""
        return self._serve(["--port", str(port)], timeout, settings)

    def _on_line(self, line: dict[str, Any]) -> None:
        """Each log line the hub writes, as it comes (subclasses read more of them)."""

    def _serve(self, args: list[str], timeout: float, settings: dict[str, str]) -> Hub:
        env = clean_env(**{f"LIENTHONG_{k.upper()}": v for k, v in settings.items()})
        self.proc = subprocess.Popen(
            [HUB_EXE, "serve", "--data", str(self.data), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        ready = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                try:
                    line = json.loads(raw)
                except ValueError:
                    line = {"event": "text", "text": raw.decode(errors="replace")}
                self.lines.append(line)
                self._on_line(line)
                if line.get("event") == "listening":
                    self.port = int(line["port"])
                    self.scheme = str(line.get("scheme") or "http")
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        assert ready.wait(timeout), f"the hub did not start: {self.lines[-5:]}"
        assert self.port, f"the hub did not start: {self.lines[-5:]}"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self._reader.join(10)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
            self.proc = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def blob_path(self, digest_hex: str) -> Path:
        return self.data / "blobs" / digest_hex[:2] / digest_hex[2:4] / digest_hex

    def statuses(self, path_part: str) -> list[int]:
        """HTTP statuses the hub logged for requests whose route contains ``path_part``."""
        return [
            int(line["status"])
            for line in list(self.lines)
            if line.get("event") == "request" and path_part in str(line.get("route"))
        ]

    # --- organs -----------------------------------------------------------------------

    def enroll(self, code: str, name: str, *extra: str) -> str:
        """``lienthong-hub enroll``: the token is the last line."""
        out = self.cli("enroll", "--data", str(self.data), code, "--name", name, *extra)
        return out.strip().splitlines()[-1]

    def _http(self, method: str, path: str, doc: Any, token: str | None = None) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(doc).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            with urllib.request.urlopen(req, timeout=30, context=context) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None

    def _admin_token(self) -> str:
        """An admin organ enrolled with the CLI, logged in over HTTP like any office."""
        if self._admin is None:
            code = unique("QTHT")
            token = self.enroll(code, "Quản trị hệ thống", "--role", "admin")
            key = SigningPrivateKey.generate(hybrid=self.hybrid)
            enc = EncryptionPrivateKey.generate(hybrid=self.hybrid)
            proof = key.sign(signed.CTX_ENROL, token.encode() + b"\x00" + code.encode())
            self._http(
                "POST",
                "/v1/enrol",
                {
                    "token": token,
                    "organ": code,
                    "signing_key": {"alg": key.alg, "pub": b64(key.public_key().raw)},
                    "encryption_key": {"alg": enc.alg, "pub": b64(enc.public_key().raw)},
                    "proof": {k: b64(v) for k, v in proof.items()},
                },
            )
            self._admin = (code, key, "")
        code, key, bearer = self._admin
        if not bearer:
            challenge = base64.b64decode(
                self._http("POST", "/v1/sessions/challenge", {"organ": code})["challenge"]
            )
            sigs = key.sign(signed.CTX_SESSION, challenge + code.encode())
            bearer = self._http(
                "POST",
                "/v1/sessions",
                {
                    "organ": code,
                    "kid": key.kid.hex(),
                    "challenge": b64(challenge),
                    "signatures": {k: b64(v) for k, v in sigs.items()},
                },
            )["token"]
            self._admin = (code, key, bearer)
        return bearer

    def token_for(
        self, code: str, name: str, *, parent: str | None = None, level: str = "other"
    ) -> str:
        """Create the organ through the admin API; returns its one-time token."""
        doc: dict[str, Any] = {"organ": code, "name": name, "level": level}
        if parent:
            doc["parent"] = parent
        return str(self._http("POST", "/v1/admin/enrolments", doc, self._admin_token())["token"])


class Node:
    """One office's home folder and the ``lienthong-node`` commands run on it."""

    def __init__(self, root: Path, name: str, code: str) -> None:
        self.home = root / name
        self.code = code
        self.daemon: subprocess.Popen[str] | None = None
        self.daemon_log = root / f"{name}.daemon.log"

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(
            **{"LIENTHONG_HOME": str(self.home), "LIENTHONG_PASSPHRASE": PASSPHRASE, **extra}
        )

    def run(self, *args: str, ok: bool = True, env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(
            [NODE_EXE, *args],
            capture_output=True,
            text=True,
            env=env or self.env(),
            timeout=120,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return result

    def json(self, *args: str) -> Any:
        return self.run(*args, "--json").doc

    def init(self, hub: Hub, token: str, *extra: str) -> Any:
        return self.json("init", "--hub", hub.url, "--code", self.code, "--token", token, *extra)

    def send(self, *args: str) -> str:
        doc = self.json("send", *args)
        return str(doc["packet_id"])

    def inbox(self) -> list[dict[str, Any]]:
        return list(self.json("inbox"))

    def start(self, *extra: str) -> None:
        log = self.daemon_log.open("w", encoding="utf-8")
        self.daemon = subprocess.Popen(
            [NODE_EXE, "run", "--backoff-max", "1", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            text=True,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> int:
        if self.daemon is None:
            return 0
        code = stop_process(self.daemon)
        self.daemon = None
        return code


def wait_for(check: Any, timeout: float = 30, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def iter_lines(path: Path) -> Iterator[str]:
    if path.exists():
        yield from path.read_text(encoding="utf-8", errors="replace").splitlines()


# --- TLS ----------------------------------------------------------------------------------


@dataclass
class Tls:
    """A throwaway CA and a server certificate it issued for 127.0.0.1 (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path, *, server: bool = True) -> Tls:
    """A new CA in ``folder`` and, with ``server``, a certificate for 127.0.0.1 it signed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    now = datetime.datetime.now(datetime.UTC)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"lienthong test CA {folder.name}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    if not server:
        return tls
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(pem_key(key))
    tls.key.chmod(0o600)
    return tls
