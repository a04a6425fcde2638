"""Scenario 1's e-mail peers: plain e-mail and S/MIME, through real Postfix and Dovecot.

Role ``mail_client``: per pair a sender and a recipient, as an office's mail client
would be.  The sender builds a message with the 10 KiB attachment (``multipart/mixed``,
base64) and submits it over SMTP (one connection per sender, messages one after the
other); with ``smime`` it first signs and then encrypts the MIME entity with
``openssl cms`` (``-sign`` SHA-256 with the sender's RSA-2048 certificate, then
``-encrypt -aes256`` to the recipient's certificate).  The recipient polls its mailbox
over IMAP (``NOOP``, ``UID SEARCH``, ``UID FETCH BODY[]``), with ``smime`` decrypts and
verifies with ``openssl cms`` (``-decrypt``, then ``-verify`` against the sender's
certificate), parses the MIME and checks the attachment's bytes.  A message counts once
its attachment is out and checked.  Plain e-mail has no receipt and no log: the cycle is
one way.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import imaplib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib

from .common import summary_ms
from .mailpeers import DOMAIN, PASSWORD

Go = Callable[[], Awaitable[None]]


async def _openssl(args: list[str], data: bytes) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(data)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[:2]}: {err.decode(errors='replace')[:300]}")
    return out


def build_message(sender: str, recipient: str, subject: str, attachment: bytes) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{sender}@{DOMAIN}"
    msg["To"] = f"{recipient}@{DOMAIN}"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject}@{DOMAIN}>"
    msg.set_content("Kính gửi: Văn phòng.\nXin gửi kèm công văn.\n")
    msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="cong-van.pdf")
    return msg


async def smime_wrap(msg: EmailMessage, certs: Path, sender: str, recipient: str) -> bytes:
    """Sign (detached, multipart/signed) then encrypt (enveloped-data) with openssl cms."""
    entity = EmailMessage()
    entity.set_content("Kính gửi: Văn phòng.\nXin gửi kèm công văn.\n")
    for part in msg.iter_attachments():
        entity.add_attachment(
            part.get_content(), maintype="application", subtype="pdf", filename="cong-van.pdf"
        )
    signed = await _openssl(
        ["cms", "-sign", "-md", "sha256",
         "-signer", str(certs / f"{sender}.crt"), "-inkey", str(certs / f"{sender}.key")],
        entity.as_bytes(policy=email.policy.SMTP),
    )  # fmt: skip
    return await _openssl(
        ["cms", "-encrypt", "-aes256",
         "-from", str(msg["From"]), "-to", str(msg["To"]), "-subject", str(msg["Subject"]),
         str(certs / f"{recipient}.crt")],
        signed,
    )  # fmt: skip


async def smime_unwrap(raw: bytes, certs: Path, sender: str, recipient: str) -> bytes:
    signed = await _openssl(
        ["cms", "-decrypt",
         "-recip", str(certs / f"{recipient}.crt"), "-inkey", str(certs / f"{recipient}.key")],
        raw,
    )  # fmt: skip
    return await _openssl(
        ["cms", "-verify", "-CAfile", str(certs / f"{sender}.crt"), "-purpose", "smimesign"],
        signed,
    )


def _attachment(raw: bytes) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for part in msg.walk():
        if part.get_filename() == "cong-van.pdf":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return data
    raise ValueError("no attachment")


async def client(job: dict[str, Any], go: Go) -> dict[str, Any]:
    pairs: list[list[str]] = job["pairs"]
    count: int = job["count"]
    size: int = job["size"]
    smime: bool = bool(job["smime"])
    certs = Path(job["certs"])
    tag = job.get("tag", "run")
    sent_at: dict[str, tuple[float, bytes]] = {}
    done_at: dict[str, float] = {}
    errors: list[str] = []
    crypto = asyncio.Semaphore(int(job.get("openssl_concurrency", 4)))

    smtps = []
    for _ in pairs:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=int(job["smtp_port"]), timeout=120)
        await smtp.connect()
        smtps.append(smtp)
    imaps = []
    for _, recipient in pairs:
        imap = imaplib.IMAP4("127.0.0.1", int(job["imap_port"]))
        imap.login(recipient, PASSWORD)
        imap.select("INBOX")
        imaps.append(imap)

    await go()
    started = time.time()
    deadline = started + float(job["deadline"])

    async def sender(n: int, s: str, r: str) -> None:
        smtp = smtps[n]
        for k in range(count):
            if time.time() > deadline:
                return
            t = time.time()
            subject = f"bench-{tag}-{s}-{k}-{uuid.uuid4().hex[:8]}"
            attachment = os.urandom(size)
            msg = build_message(s, r, subject, attachment)
            if smime:
                async with crypto:
                    raw = await smime_wrap(msg, certs, s, r)
            else:
                raw = msg.as_bytes(policy=email.policy.SMTP)
            sent_at[subject] = (t, hashlib.sha256(attachment).digest())
            await smtp.sendmail(f"{s}@{DOMAIN}", [f"{r}@{DOMAIN}"], raw)

    async def recipient(n: int, s: str, r: str) -> None:
        imap = imaps[n]
        last = 0
        got = 0

        async def handle(raw: bytes) -> None:
            head = email.message_from_bytes(raw, policy=email.policy.default)
            subject = str(head["Subject"])
            if not subject.startswith(f"bench-{tag}-"):
                return
            if smime:
                async with crypto:
                    raw = await smime_unwrap(raw, certs, s, r)
            data = _attachment(raw)
            expected = sent_at.get(subject)
            if expected is None or hashlib.sha256(data).digest() != expected[1]:
                errors.append(f"{subject}: attachment differs")
                return
            done_at[subject] = time.time()

        while got < count and time.time() < deadline:
            await asyncio.to_thread(imap.noop)
            _, data = await asyncio.to_thread(imap.uid, "SEARCH", None, f"UID {last + 1}:*")
            uids = [int(u) for u in (data[0] or b"").split() if int(u) > last]
            if not uids:
                await asyncio.sleep(0.02)
                continue
            for first in range(0, len(uids), 50):
                chunk = uids[first : first + 50]
                _, fetched = await asyncio.to_thread(
                    imap.uid, "FETCH", ",".join(map(str, chunk)), "(BODY.PEEK[])"
                )
                raws = [part[1] for part in fetched if isinstance(part, tuple)]
                await asyncio.gather(*(handle(raw) for raw in raws))
                got += len(raws)
            last = max(uids)

    work = []
    for n, (s, r) in enumerate(pairs):
        work += [sender(n, s, r), recipient(n, s, r)]
    outcome = await asyncio.gather(*work, return_exceptions=True)
    errors += [f"{type(x).__name__}: {x}" for x in outcome if isinstance(x, BaseException)]
    for smtp in smtps:
        with contextlib.suppress(Exception):  # the server may have closed it already
            await smtp.quit()
    for imap in imaps:
        with contextlib.suppress(Exception):
            imap.logout()
    latencies = [done_at[k] - sent_at[k][0] for k in done_at]
    return {
        "start": started,
        "end": max(done_at.values()) if done_at else time.time(),
        "sent": len(sent_at),
        "completed": len(done_at),
        "latency_ms": summary_ms(latencies),
        "errors": errors[:20],
        "error_count": len(errors),
    }
