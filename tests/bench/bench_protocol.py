"""Protocol benchmark: sealing and opening speed, memory, fan-out sealing.

Run with ``make bench-protocol``; prints one JSON object.  Everything runs on one core in
this process, with the real protocol code and real keys.

* ``seal_mb_s`` / ``open_mb_s``: a 256 MiB single file (``LIENTHONG_BENCH_MIB`` to change)
  streamed through the Sealer in 1 MiB pieces, the ciphertext written to a temporary file,
  then read back and streamed through the Opener; only the time inside the protocol calls
  counts (the disk is not what is measured here).
* ``rss_growth_mib``: peak resident memory growth over the baseline while doing both.
* ``seal_1000_x25519_s`` / ``seal_1000_pq_s``: a 10 KiB document sealed to 1,000
  recipients, starting from their raw public keys (as read from directory entries).
* ``envelope_1000_pq_bytes``: size of that hybrid envelope.
* ``open_verify_10k_per_s``: parse + verify sender + open + check a 10 KiB packet (classic);
  ``open_verify_10k_pq_per_s`` the same with hybrid keys.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

from protocol.directory import DirectoryEntry, KeyRecord, sign_entry, verify_entry
from protocol.keys import EncryptionPrivateKey, EncryptionPublicKey, SigningPrivateKey
from protocol.packet import (
    DocumentMetadata,
    Opener,
    Recipient,
    Sealer,
    open_packet,
    parse_envelope,
    seal_packet,
)

MIB = 1024 * 1024
SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _entry(authority: SigningPrivateKey, code: str, sign: SigningPrivateKey) -> DirectoryEntry:
    now = int(time.time())
    enc = EncryptionPrivateKey.generate(hybrid=sign.alg != "ed25519")
    entry = DirectoryEntry(
        organ=code,
        name="Văn phòng Tỉnh ủy",
        role="office",
        level="province",
        signing_keys=(KeyRecord(sign.alg, sign.public_key().raw, now - 60, now + 86400),),
        encryption_keys=(KeyRecord(enc.alg, enc.public_key().raw, now - 60, now + 86400),),
        valid_from=now - 60,
        serial=1,
        issued_at=now,
        authority_kid=authority.kid,
    )
    return verify_entry(sign_entry(entry, authority), authority.public_key()).entry


def bench_stream(size_mib: int) -> dict[str, float]:
    sender = SigningPrivateKey.generate()
    recipient = EncryptionPrivateKey.generate()
    block = os.urandom(MIB)
    base = _rss_mib()
    with tempfile.TemporaryFile() as body:
        sealer = Sealer(
            sender="000.00.00.H41",
            signing_key=sender,
            recipients=[Recipient("000.00.01.H41", recipient.public_key())],
            metadata=DocumentMetadata(subject=SUBJECT),
        )
        sealer.add_file("Tài liệu hội nghị.pdf", "application/pdf")
        seal_time = 0.0
        for _ in range(size_mib):
            t = time.perf_counter()
            chunks = sealer.feed(block)
            seal_time += time.perf_counter() - t
            for c in chunks:
                body.write(c)
        t = time.perf_counter()
        last, env = sealer.finish()
        seal_time += time.perf_counter() - t
        body.write(last)
        body.flush()
        body.seek(0)
        envelope = parse_envelope(env)
        open_time = 0.0
        t = time.perf_counter()
        opener = Opener(envelope, organ="000.00.01.H41", key=recipient)
        open_time += time.perf_counter() - t
        buf = bytearray(MIB)
        view = memoryview(buf)
        while n := body.readinto(buf):
            t = time.perf_counter()
            opener.feed(view[:n])
            open_time += time.perf_counter() - t
        t = time.perf_counter()
        opener.finish()
        open_time += time.perf_counter() - t
    mb = size_mib * MIB / 1e6
    return {
        "stream_mib": size_mib,
        "seal_mb_s": round(mb / seal_time, 1),
        "open_mb_s": round(mb / open_time, 1),
        "rss_growth_mib": round(_peak_rss_mib() - base, 1),
    }


def bench_fanout(hybrid: bool, n: int = 1000) -> tuple[float, int]:
    sender = SigningPrivateKey.generate(hybrid=hybrid)
    raw = []
    for _ in range(n):
        pub = EncryptionPrivateKey.generate(hybrid=hybrid).public_key()
        raw.append((pub.alg, pub.raw))
    doc = os.urandom(10 * 1024)
    t = time.perf_counter()
    recipients = [
        Recipient(f"000.00.{i // 100:02d}.H{i % 100:02d}", EncryptionPublicKey.from_raw(alg, pub))
        for i, (alg, pub) in enumerate(raw)
    ]
    env, _body = seal_packet(
        sender="000.00.00.H41",
        signing_key=sender,
        recipients=recipients,
        metadata=DocumentMetadata(subject=SUBJECT, doc_type="CT"),
        files=[("Chỉ thị số 05-CT-TU.pdf", "application/pdf", doc)],
    )
    return time.perf_counter() - t, len(env)


def bench_open_verify(hybrid: bool, rounds: int = 2000) -> float:
    authority = SigningPrivateKey.generate()
    sender = SigningPrivateKey.generate(hybrid=hybrid)
    sender_entry = _entry(authority, "000.00.00.H41", sender)
    recipient = EncryptionPrivateKey.generate(hybrid=hybrid)
    env, body = seal_packet(
        sender="000.00.00.H41",
        signing_key=sender,
        recipients=[Recipient("000.00.01.H41", recipient.public_key())],
        metadata=DocumentMetadata(subject=SUBJECT),
        files=[("Báo cáo quý III.pdf", "application/pdf", os.urandom(10 * 1024))],
    )
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(rounds // 5):
            envelope = parse_envelope(env)
            envelope.verify_sender(sender_entry)
            open_packet(envelope, body, organ="000.00.01.H41", key=recipient)
        samples.append((rounds // 5) / (time.perf_counter() - t))
    return statistics.median(samples)


def main() -> None:
    size = int(os.environ.get("LIENTHONG_BENCH_MIB", "256"))
    result: dict[str, Any] = {}
    result.update(bench_stream(size))
    t_x, _ = bench_fanout(False)
    t_pq, env_pq = bench_fanout(True)
    result["seal_1000_x25519_s"] = round(t_x, 3)
    result["seal_1000_pq_s"] = round(t_pq, 3)
    result["envelope_1000_pq_bytes"] = env_pq
    result["open_verify_10k_per_s"] = round(bench_open_verify(False))
    result["open_verify_10k_pq_per_s"] = round(bench_open_verify(True))
    result["targets_met"] = {
        "seal_mb_s>=400": result["seal_mb_s"] >= 400,
        "open_mb_s>=400": result["open_mb_s"] >= 400,
        "rss_growth_mib<=32": result["rss_growth_mib"] <= 32,
        "seal_1000_pq_s<=0.5": result["seal_1000_pq_s"] <= 0.5,
    }
    result["machine"] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        # Figures halve when other work shares the two cores: read them with this.
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
