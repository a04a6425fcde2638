"""Lienthong client processes of the benchmarks, built on :class:`nodes.client.HubClient`.

Each office is its own ``HubClient`` (its own connection pool, session token and pinned
directory authority), as if it ran on its own machine; a process holds several.  The
protocol work is the real one from :mod:`protocol`: sealing, the sender's signature,
HPKE, the STREAM body, receipts.

Roles (see :mod:`tests.bench.workers`):

* :func:`small_cycle` -- scenario 1: senders seal 10 KiB documents and submit them in
  batches, verifying each ``accepted`` hub receipt; recipients long-poll, verify the
  sender's signature, unwrap, take the body (inline in the mailbox answer up to 64 KiB,
  else downloaded), open and check it, sign receipt 01 and
  post receipts in batches; senders long-poll for the receipts 01 and verify them (and
  the hub's ``fetched`` receipts).  A packet counts once its sender verified its 01.
* :func:`pollers` -- scenarios 3 and 5: many offices each holding a long-poll; records
  when each envelope arrives, acknowledges and polls again.
* :func:`steady_senders` -- scenario 5: packets to random recipients at a fixed rate.
* :func:`large_transfer` -- scenario 2: one file sealed, uploaded, downloaded, opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nodes.client import HubClient, inline_body, unb64
from protocol.directory import DirectoryEntry
from protocol.keys import SigningPublicKey
from protocol.packet import (
    DocumentMetadata,
    Envelope,
    Opener,
    Recipient,
    parse_envelope,
    seal_packet,
)
from protocol.receipts import (
    OfficeReceipt,
    sign_office_receipt,
    verify_hub_receipt,
    verify_office_receipt,
)

from .common import SUBJECT, summary_ms
from .hubs import OfficeKeys

Go = Callable[[], Awaitable[None]]


def _public(doc: dict[str, str]) -> SigningPublicKey:
    return SigningPublicKey.from_raw(doc["alg"], base64.b64decode(doc["pub"]))


def load_offices(
    path: str, codes: set[str] | None = None
) -> tuple[dict[str, Any], dict[str, OfficeKeys]]:
    doc = json.loads(Path(path).read_text())
    offices = {
        o["code"]: OfficeKeys.from_json(o)
        for o in doc["offices"]
        if codes is None or o["code"] in codes
    }
    return doc["identity"], offices


class Offices:
    """Open HubClients for a set of offices, spread over the hub processes."""

    def __init__(self, job: dict[str, Any], codes: list[str]) -> None:
        self.identity, self.keys = load_offices(job["offices_file"], set(codes))
        self.authority = _public(self.identity["authority"])
        self.hub_key = _public(self.identity["hub_key"])
        urls: list[str] = job["urls"]
        self.clients = {
            code: HubClient(
                urls[n % len(urls)],
                organ=code,
                signing_key=self.keys[code].signing,
                authority=self.authority,
                read_timeout=float(job.get("read_timeout", 120)),
            )
            for n, code in enumerate(codes)
        }
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Offices:
        for client in self.clients.values():
            await self._stack.enter_async_context(client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def login(self, concurrency: int = 32) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(client: HubClient) -> None:
            async with gate:
                await client.login()

        await asyncio.gather(*(one(c) for c in self.clients.values()))

    async def entry(self, asker: str, organ: str) -> DirectoryEntry:
        found, _ = await self.clients[asker].entries([organ])
        return found[organ].entry


def _receipt(keys: OfficeKeys, env: Envelope, status: str = "01") -> bytes:
    return sign_office_receipt(
        OfficeReceipt(
            packet_id=env.packet_id,
            envelope_digest=env.digest,
            organ=keys.code,
            signer=keys.code,
            signer_kid=keys.signing.kid,
            status=status,
            at=int(time.time()),
        ),
        keys.signing,
    )


# --- scenario 1 ----------------------------------------------------------------------------


async def small_cycle(job: dict[str, Any], go: Go) -> dict[str, Any]:
    pairs: list[list[str]] = job["pairs"]
    count: int = job["count"]
    batch: int = job["batch"]
    size: int = job["size"]
    spool = Path(job["spool"]) / f"w{os.getpid()}"
    spool.mkdir(parents=True, exist_ok=True)
    codes = [c for pair in pairs for c in pair]
    errors: list[str] = []
    sealed_at: dict[str, float] = {}
    done_at: dict[str, float] = {}
    envelopes: dict[str, Envelope] = {}
    counters = {"accepted": 0, "no_hub_receipt": 0, "opened": 0, "fetched_verified": 0}

    async with Offices(job, codes) as offices:
        await offices.login()
        entries: dict[str, DirectoryEntry] = {}
        for s, r in pairs:
            entries[r] = await offices.entry(s, r)
            entries[s] = await offices.entry(r, s)
        await go()
        started = time.time()
        deadline = started + float(job["deadline"])

        async def sender(s: str, r: str) -> None:
            client, keys = offices.clients[s], offices.keys[s]
            recipient = Recipient(r, entries[r].current_encryption_key(int(time.time())))
            for first in range(0, count, batch):
                if time.time() > deadline:
                    return
                items = []
                for _ in range(min(batch, count - first)):
                    t = time.time()
                    env_raw, body = seal_packet(
                        sender=s,
                        signing_key=keys.signing,
                        recipients=[recipient],
                        metadata=DocumentMetadata(subject=SUBJECT, doc_type="CV"),
                        files=[("Công văn.pdf", "application/pdf", os.urandom(size))],
                    )
                    env = parse_envelope(env_raw)
                    pid = str(env.packet_uuid)
                    sealed_at[pid] = t
                    envelopes[pid] = env
                    items.append((env_raw, body))
                results = await client.submit_batch(items)
                for result in results:
                    if result.get("status") != 200:
                        errors.append(f"submit: {result}")
                        continue
                    counters["accepted"] += 1
                    raw = result.get("receipt")
                    if raw is None:
                        counters["no_hub_receipt"] += 1
                        continue
                    env = envelopes[str(result["packet_id"])]
                    verify_hub_receipt(unb64(raw), offices.hub_key, envelope=env, kind="accepted")

        async def recipient(r: str, s: str) -> None:
            client, keys = offices.clients[r], offices.keys[r]
            seen: set[str] = set()
            gate = asyncio.Semaphore(8)

            async def receive(item: dict[str, Any]) -> bytes | None:
                async with gate:
                    env = parse_envelope(unb64(item["envelope"]))
                    env.verify_sender(entries[env.sender])
                    key = keys.encryption
                    opener = Opener(env, organ=r, key=key)
                    # A small body comes inline in the mailbox item (size and SHA-256
                    # checked); a larger one is downloaded.
                    data = inline_body(item, env.body_info)
                    if data is None:
                        dest = spool / f"{uuid.UUID(bytes=env.packet_id)}.body"
                        await client.download_body(env.body_info.sha256, env.body_info, dest)
                        data = dest.read_bytes()
                        dest.unlink()
                    opener.feed(data)
                    opener.finish()  # every chunk tag, the body digest, each file's SHA-256
                    counters["opened"] += 1
                    return _receipt(keys, env)

            # Each answer's items are acknowledged with the next long-poll (one request),
            # the last ones on their own (their acknowledgement records ``fetched``).
            stored: list[int] = []
            while len(seen) < count and time.time() < deadline:
                items = await client.mailbox(wait=5, limit=200, ack=stored)
                fresh = [
                    i for i in items if i.get("kind") == "envelope" and i["packet_id"] not in seen
                ]
                receipts = [x for x in await asyncio.gather(*(receive(i) for i in fresh)) if x]
                seen.update(i["packet_id"] for i in fresh)
                if receipts:
                    for result in await client.post_receipts(receipts):
                        if result.get("status") != 200:
                            errors.append(f"receipt: {result}")
                stored = [i["id"] for i in items]
            await client.ack(stored)

        async def receipts(s: str, r: str) -> None:
            client = offices.clients[s]
            verified: set[str] = set()
            fetched: set[str] = set()
            # Until every 01 and every hub ``fetched`` receipt is in: a recipient's
            # acknowledgement of an inline body records ``fetched`` after its 01 is sent.
            stored: list[int] = []
            while (len(verified) < count or len(fetched) < count) and time.time() < deadline:
                items = await client.mailbox(wait=5, limit=500, ack=stored)
                for item in items:
                    pid = item["packet_id"]
                    env = envelopes.get(pid)
                    if env is None:
                        errors.append(f"receipt for an unknown packet {pid}")
                        continue
                    raw = unb64(item["receipt"])
                    if item.get("kind") == "receipt":
                        verify_office_receipt(raw, entries[r], envelope=env)
                        if pid not in verified:
                            verified.add(pid)
                            done_at[pid] = time.time()
                    elif item.get("kind") == "hub_receipt":
                        verify_hub_receipt(raw, offices.hub_key, envelope=env, kind="fetched")
                        if pid not in fetched:
                            fetched.add(pid)
                            counters["fetched_verified"] += 1
                stored = [i["id"] for i in items]
            await client.ack(stored)

        tasks = []
        for s, r in pairs:
            tasks += [sender(s, r), recipient(r, s), receipts(s, r)]
        outcome = await asyncio.gather(*tasks, return_exceptions=True)
        errors += [f"{type(x).__name__}: {x}" for x in outcome if isinstance(x, BaseException)]
        ended = max(done_at.values()) if done_at else time.time()
    latencies = [done_at[p] - sealed_at[p] for p in done_at]
    return {
        "start": started,
        "end": ended,
        "sealed": len(sealed_at),
        "completed": len(done_at),
        **counters,
        "latency_ms": summary_ms(latencies),
        "errors": errors[:20],
        "error_count": len(errors),
    }


# --- scenarios 3 and 5 -------------------------------------------------------------------


async def pollers(job: dict[str, Any], go: Go) -> dict[str, Any]:
    """Offices long-polling until ``deadline`` (or, with ``expect``, until each got that many
    envelopes).  Arrival times by packet id; envelope bytes received."""
    codes: list[str] = job["codes"]
    wait = int(job.get("wait", 30))
    expect = job.get("expect")
    arrivals: dict[str, list[float]] = {}
    per_office: dict[str, int] = dict.fromkeys(codes, 0)
    errors: list[str] = []
    stats = {"polls": 0, "bytes": 0}
    async with Offices(job, codes) as offices:
        await offices.login(concurrency=int(job.get("login_concurrency", 32)))
        await go()
        started = time.time()
        deadline = started + float(job["deadline"])
        stop = asyncio.Event()

        async def poll(code: str) -> None:
            client = offices.clients[code]
            # What an answer brought is acknowledged with the next long-poll, as the
            # node's daemon does (one request per answer).
            stored: list[int] = []
            while not stop.is_set() and time.time() < deadline:
                if expect is not None and per_office[code] >= expect:
                    break
                try:
                    left = max(1, min(wait, int(deadline - time.time())))
                    items = await client.mailbox(wait=left, limit=100, ack=stored)
                    stored = []
                except Exception as exc:  # keep polling: a refusal is a figure, not a crash
                    errors.append(f"{code}: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.5)
                    continue
                now = time.time()
                stats["polls"] += 1
                for item in items:
                    if item.get("kind") == "envelope":
                        arrivals.setdefault(item["packet_id"], []).append(now)
                        stats["bytes"] += len(item.get("envelope", ""))
                        per_office[code] += 1
                stored = [i["id"] for i in items]
            if stored:
                with contextlib.suppress(Exception):
                    await client.ack(stored)

        tasks = [asyncio.create_task(poll(c)) for c in codes]
        if expect is None:
            # Stop when told (a line on stdin), or at the deadline.
            loop = asyncio.get_running_loop()
            reader = loop.run_in_executor(None, _stdin_line)
            await asyncio.wait(
                [asyncio.ensure_future(reader), *tasks],
                timeout=max(0.0, deadline - time.time()) + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors += [f"{type(x).__name__}: {x}" for x in results if isinstance(x, BaseException)]
    return {
        "start": started,
        "offices": len(codes),
        "arrivals": arrivals,
        "complete": sum(1 for n in per_office.values() if expect is not None and n >= expect),
        **stats,
        "errors": errors[:20],
        "error_count": len(errors),
    }


def _stdin_line() -> str:
    import sys

    return sys.stdin.readline()


async def steady_senders(job: dict[str, Any], go: Go) -> dict[str, Any]:
    """``rate`` packets/s for ``seconds``, single-packet submissions spread over senders."""
    senders: list[str] = job["senders"]
    targets: list[str] = job["targets"]
    rate = float(job["rate"])
    seconds = float(job["seconds"])
    size = int(job["size"])
    rng = random.Random(job.get("seed", 5))
    max_inflight = int(job.get("max_inflight", 400))
    grace = float(job.get("grace", 30))
    submitted: dict[str, float] = {}
    accepted_s: list[float] = []
    accepted_at: list[float] = []
    errors: list[str] = []
    async with Offices(job, senders) as offices:
        await offices.login()
        # Every sender learns every target's key up front (a node caches its directory).
        keys: dict[str, Recipient] = {}
        asker = offices.clients[senders[0]]
        found, _ = await asker.entries(targets)
        for code, signed_entry in found.items():
            keys[code] = Recipient(
                code, signed_entry.entry.current_encryption_key(int(time.time()))
            )
        await go()
        started = time.time()
        total = int(rate * seconds)
        inflight: set[asyncio.Task[None]] = set()

        async def send(n: int, s: str, r: str) -> None:
            client = offices.clients[s]
            env_raw, body = seal_packet(
                sender=s,
                signing_key=offices.keys[s].signing,
                recipients=[keys[r]],
                metadata=DocumentMetadata(subject=SUBJECT),
                files=[("Thông báo.pdf", "application/pdf", os.urandom(size))],
            )
            pid = str(uuid.UUID(bytes=parse_envelope(env_raw).packet_id))
            t = time.time()
            submitted[pid] = t
            try:
                (result,) = await client.submit_batch([(env_raw, body)])
                if result.get("status") != 200:
                    errors.append(str(result))
                    return
                now = time.time()
                accepted_s.append(now - t)
                accepted_at.append(now)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        skipped = 0
        for n in range(total):
            due = started + n / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(inflight) >= max_inflight:
                skipped += 1  # the hub is this far behind: a bounded load generator stops
                continue
            s = senders[n % len(senders)]
            r = rng.choice(targets)
            task = asyncio.create_task(send(n, s, r))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        window = time.time() - started
        if inflight:
            _, late = await asyncio.wait(set(inflight), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        ended = time.time()
    return {
        "start": started,
        "end": ended,
        "submitted": submitted,
        "skipped_overloaded": skipped,
        "offered_rate": round(len(submitted) / max(1e-9, window), 1),
        "accepted": len(accepted_at),
        "accepted_rate": round(
            len(accepted_at) / max(1e-9, max(accepted_at, default=started) - started), 1
        ),
        "accept_ms": summary_ms(accepted_s),
        "errors": errors[:20],
        "error_count": len(errors),
    }


async def fanout_sender(job: dict[str, Any], go: Go) -> dict[str, Any]:
    """One directive to every office in ``targets``: directory, sealing, submission."""
    sender: str = job["sender"]
    targets: list[str] = job["targets"]
    size = int(job["size"])
    async with Offices(job, [sender]) as offices:
        client, keys = offices.clients[sender], offices.keys[sender]
        await client.login()
        await go()
        t0 = time.time()
        found, unknown = await client.entries(targets)  # each verified with the authority key
        t_dir = time.time()
        at = int(t_dir)
        recipients = [Recipient(c, found[c].entry.current_encryption_key(at)) for c in targets]
        t1 = time.perf_counter()
        env_raw, body = seal_packet(
            sender=sender,
            signing_key=keys.signing,
            recipients=recipients,
            metadata=DocumentMetadata(subject=SUBJECT, doc_type="CT"),
            files=[("Chỉ thị số 05-CT-TU.pdf", "application/pdf", os.urandom(size))],
        )
        seal_s = time.perf_counter() - t1
        submitted = time.time()
        (result,) = await client.submit_batch([(env_raw, body)])
        accepted = time.time()
        env = parse_envelope(env_raw)
        receipt = result.get("receipt")
        if receipt is not None:
            verify_hub_receipt(unb64(receipt), offices.hub_key, envelope=env, kind="accepted")
    return {
        "start": t0,
        "directory_seconds": round(t_dir - t0, 3),
        "unknown": len(unknown),
        "seal_seconds": round(seal_s, 4),
        "envelope_bytes": len(env_raw),
        "body_bytes": len(body),
        "submitted": submitted,
        "accepted": accepted,
        "status": result.get("status"),
        "hub_receipt": receipt is not None,
        "packet_id": str(env.packet_uuid),
    }
