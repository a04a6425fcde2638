"""Private Postfix and Dovecot instances for the e-mail side of scenario 1.

Both run from their own configuration folders under the benchmark's temporary folder,
listen on 127.0.0.1 only, on free ports, and are stopped afterwards; the system's own
instances (if any) are never touched.

* **Postfix** (``postfix -c <dir> start``): its own ``main.cf``/``master.cf``, queue and
  data folders; ``smtpd`` on 127.0.0.1:<port> accepting mail from 127.0.0.0/8 for one
  virtual domain, delivered by the ``virtual`` agent into ``<mail>/<user>/`` Maildirs.
  Everything else stays at Postfix's defaults (process limits, fsync of queue files and
  Maildir files), as an office's mail server would run it.  ``chroot`` is off for every
  service, since the private queue folder has no chroot jail set up.
* **Dovecot** (``dovecot -c <file>``): IMAP on 127.0.0.1:<port>, plaintext login
  (loopback only), a static password database, the same Maildirs.

Mail is owned by ``nobody`` (Postfix's ``virtual`` agent refuses to deliver as root).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import free_port

DOMAIN = "office.bench.invalid"
PASSWORD = "bench-password"
POSTFIX = "/usr/sbin/postfix"
DOVECOT = "/usr/sbin/dovecot"


def available() -> str | None:
    """None when the peers are installed, else what is missing."""
    missing = [p for p in (POSTFIX, DOVECOT, "/usr/lib/dovecot/imap") if not Path(p).exists()]
    if shutil.which("openssl") is None:
        missing.append("openssl")
    return ", ".join(missing) or None


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class MailPeers:
    root: Path
    users: tuple[str, ...] = tuple(f"office{n:02d}" for n in range(64))
    smtp_port: int = 0
    imap_port: int = 0

    @property
    def mail(self) -> Path:
        return self.root / "mail"

    @property
    def postfix_conf(self) -> Path:
        return self.root / "postfix"

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    def maildir(self, user: str) -> Path:
        return self.mail / user

    def start(self) -> MailPeers:
        self.smtp_port = free_port()
        self.imap_port = free_port()
        nobody = pwd.getpwnam("nobody")
        self.mail.mkdir(parents=True, exist_ok=True)
        # Postfix and Dovecot drop to their own users: they must be able to walk down to
        # their folders (a temporary folder is 0700).  Traverse only, no listing.
        for folder in [self.root, *self.root.parents]:
            st = folder.stat()
            if st.st_uid == os.getuid() and not st.st_mode & stat.S_IXOTH:
                folder.chmod(st.st_mode | stat.S_IXOTH | stat.S_IXGRP)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        self._postfix(nobody.pw_uid, nobody.pw_gid)
        self._dovecot(nobody.pw_uid, nobody.pw_gid)
        _wait_port(self.smtp_port)
        _wait_port(self.imap_port)
        return self

    def _postfix(self, uid: int, gid: int) -> None:
        conf = self.postfix_conf
        queue = self.root / "postfix-queue"
        data = self.root / "postfix-data"
        conf.mkdir(parents=True, exist_ok=True)
        queue.mkdir(parents=True, exist_ok=True)
        data.mkdir(parents=True, exist_ok=True)
        postfix = pwd.getpwnam("postfix")
        os.chown(data, postfix.pw_uid, postfix.pw_gid)
        main = f"""\
# Private Postfix instance of the Lienthong benchmark: loopback only.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.bench.invalid
mydomain = bench.invalid
myorigin = $mydomain
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
relayhost =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = texthash:{conf}/virtual_mailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
message_size_limit = 104857600
virtual_mailbox_limit = 0
maillog_file_prefixes = {self.root}
maillog_file = {self.root}/postfix.log
biff = no
smtputf8_enable = no
"""
        (conf / "main.cf").write_text(main)
        # Each user's Maildir is <mail>/<user>/ (the trailing slash: Maildir format).
        (conf / "virtual_mailbox").write_text("".join(f"{u}@{DOMAIN} {u}/\n" for u in self.users))
        master = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            if line.startswith(("#", " ")) or not line.strip():
                continue
            cols = line.split()
            if cols[0] in ("maildrop", "uucp", "ifmail", "bsmtp", "scalemail-backend", "mailman"):
                continue  # pipe services with continuation lines: not needed
            if cols[0] == "smtp" and cols[1] == "inet":
                cols[0] = f"127.0.0.1:{self.smtp_port}"
            cols[4] = "n"  # no chroot
            master.append("  ".join(cols))
        (conf / "master.cf").write_text("\n".join(master) + "\n")
        code = subprocess.call(
            [POSTFIX, "-c", str(conf), "start"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        if code != 0:
            log = self.root / "postfix.log"
            text = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"postfix start exited {code}: {text}")

    def _dovecot(self, uid: int, gid: int) -> None:
        base = self.root / "dovecot"
        base.mkdir(parents=True, exist_ok=True)
        (base / "run").mkdir(exist_ok=True)
        (base / "state").mkdir(exist_ok=True)
        group = grp.getgrgid(gid).gr_name
        conf = f"""\
# Private Dovecot instance of the Lienthong benchmark: IMAP on loopback only.
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
instance_name = lienthong-bench-{self.imap_port}
log_path = {self.root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_privileged_group = {group}
mail_location = maildir:{self.mail}/%n
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.mail}/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
"""
        self.dovecot_conf.write_text(conf)
        # Dovecot daemonizes and its children keep inherited pipes open: no pipes here.
        code = subprocess.call(
            [DOVECOT, "-c", str(self.dovecot_conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        if code != 0:
            log = self.root / "dovecot.log"
            raise RuntimeError(f"dovecot exited {code}: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            subprocess.call(
                [POSTFIX, "-c", str(self.postfix_conf), "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
        with contextlib.suppress(Exception):
            subprocess.call(
                ["/usr/bin/doveadm", "-c", str(self.dovecot_conf), "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )

    def pids(self) -> list[int]:
        """Processes of both instances: each master and everything below it."""
        masters = []
        for pidfile in (
            self.root / "postfix-queue" / "pid" / "master.pid",
            self.root / "dovecot" / "run" / "master.pid",
        ):
            with contextlib.suppress(OSError, ValueError):
                masters.append(int(pidfile.read_text().split()[0]))
        children: dict[int, list[int]] = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(proc.name))
        out, todo = [], list(masters)
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += children.get(pid, [])
        return out

    def clear(self, user: str) -> None:
        """Empty a user's Maildir between runs (the server keeps running)."""
        for sub in ("new", "cur", "tmp"):
            folder = self.maildir(user) / sub
            if folder.exists():
                for p in folder.iterdir():
                    with contextlib.suppress(OSError):
                        p.unlink()


@contextlib.contextmanager
def running(root: Path) -> Iterator[MailPeers]:
    peers = MailPeers(root)
    try:
        yield peers.start()
    finally:
        peers.stop()


# --- S/MIME keys for the offices ----------------------------------------------------------


def make_smime_identity(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate and key, as a small CA would issue an office."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
         "-subj", f"/CN={name}/emailAddress={name}@{DOMAIN}",
         "-addext", "keyUsage=digitalSignature,keyEncipherment",
         "-addext", "extendedKeyUsage=emailProtection",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
