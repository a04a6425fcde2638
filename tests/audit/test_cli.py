"""``lienthong-audit`` and the node's witness, as real processes against a real hub.

The hub is ``lienthong-hub serve`` on the embedded default (SQLite) in a temporary folder;
offices are ``lienthong-node`` homes, the auditor a ``lienthong-audit`` home.  The
dishonest operator edits the hub's SQLite file and, where a real one on the hub's machine
would have them, uses the hub's own keys from its data folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from hub.hubkeys import load_keys
from protocol.audit import encode_event, parse_event
from protocol.bundle import log_signer
from protocol.checkpoint import Checkpoint, sign_checkpoint
from protocol.directory import KeyRecord, sign_entry, verify_entry
from protocol.keys import SigningPrivateKey
from protocol.merkle import MemoryHashStore, leaf_hash
from tests.e2e.harness import PASSPHRASE, Hub, Node, Result, clean_env, unique

AUDIT_EXE = str(Path(sys.executable).parent / "lienthong-audit")


class Audit:
    """One auditor's home and the ``lienthong-audit`` commands run on it."""

    def __init__(self, root: Path, name: str) -> None:
        self.home = root / name

    def run(self, *args: str, ok: bool = True) -> Result:
        proc = subprocess.run(
            [AUDIT_EXE, *args],
            capture_output=True,
            text=True,
            env=clean_env(LIENTHONG_AUDIT_HOME=str(self.home), LIENTHONG_PASSPHRASE=PASSPHRASE),
            timeout=120,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return result

    def json(self, *args: str) -> Any:
        return self.run(*args, "--json").doc


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(tmp_path).init().start()
    try:
        yield h
    finally:
        h.stop()


def office(hub: Hub, root: Path, prefix: str, name: str, parent: Node | None = None) -> Node:
    code = unique(prefix)
    token = hub.token_for(code, name, parent=parent.code if parent else None)
    node = Node(root, code, code)
    node.init(hub, token, "--abbrev", prefix)
    return node


def auditor(hub: Hub, root: Path, name: str = "kiem-tra") -> tuple[Audit, str]:
    code = unique("UBKT")
    token = hub.enroll(code, "Ủy ban Kiểm tra Tỉnh ủy", "--role", "auditor")
    audit = Audit(root, name)
    audit.json("init", "--hub", hub.url, "--code", code, "--token", token)
    return audit, code


def test_init_with_a_wrong_pin_spends_nothing(hub: Hub, tmp_path: Path) -> None:
    """``--authority`` and ``--hub-key`` are checked before the one-time token is spent
    and before anything is written; with the right fingerprints the same token works."""
    wrong = "0123:4567:89ab:cdef:0123:4567:89ab:cdef"
    code = unique("UBKT")
    token = hub.enroll(code, "Ủy ban Kiểm tra Tỉnh ủy", "--role", "auditor")
    audit = Audit(tmp_path, "kiem-tra")
    init = ("init", "--hub", hub.url, "--code", code, "--token", token, "--json")
    enrolments = len(hub.statuses("/v1/enrol"))
    for flag, what in (("--authority", "directory authority"), ("--hub-key", "hub key")):
        refused = audit.run(*init, flag, wrong, ok=False)
        assert refused.returncode == 1
        error = refused.doc["error"]
        assert error["code"] == "hub_key_mismatch"
        assert f"the hub's {what} is {hub.fingerprints[what]}, not {wrong}" == error["detail"]
        assert not audit.home.exists()
    assert len(hub.statuses("/v1/enrol")) == enrolments  # the token was not even offered
    done = audit.run(
        *init,
        "--authority",
        hub.fingerprints["directory authority"],
        "--hub-key",
        hub.fingerprints["hub key"],
    ).doc
    assert done["organ"] == code


def directive(province: Node, xa: Node, root: Path) -> str:
    doc = root / "Kế hoạch tổng kết.pdf"
    doc.write_bytes(os.urandom(2000))
    pid = province.send(
        "--to", xa.code, "--type", "KH", "--subject", "Kế hoạch tổng kết năm 2025",
        "--urgency", "hoa-toc", str(doc),
    )  # fmt: skip
    assert xa.json("sync")["received"] == [pid]
    xa.json("register", pid)
    xa.json("sync")
    province.json("sync")
    return pid


def settle(hub: Hub) -> None:
    time.sleep(1.5)  # the sequencer indexes events every second


def test_checkpoint_trace_verify_report(hub: Hub, tmp_path: Path) -> None:
    province = office(hub, tmp_path, "TU", "Văn phòng Tỉnh ủy")
    xa = office(hub, tmp_path, "DU", "Đảng ủy xã Yên Lạc", parent=province)
    audit, _ = auditor(hub, tmp_path)
    pid = directive(province, xa, tmp_path)
    settle(hub)
    for node in (province, xa):
        node.json("sync")  # each office checks the log and cosigns it as a witness
    cp = audit.json(
        "checkpoint", "--witness", province.code, "--witness", xa.code, "--threshold", "2"
    )
    assert sorted(cp["witnesses"]) == sorted(
        [f"lienthong.witness/{province.code}", f"lienthong.witness/{xa.code}"]
    )
    traced = audit.json("trace", pid)
    assert traced["alarms"] == []
    assert traced["complete"] is True
    assert [e["kind"] for e in traced["events"]] == [
        "packet_accepted",
        "body_fetched",
        "receipt",
        "receipt",
    ]
    assert traced["envelope"]["reference"]["notation"] == "KH/TU"
    proof = Path(traced["proof_file"])

    readable = audit.run("trace", pid)
    assert "Complete: the bundle holds every logged event" in readable.stdout

    # offline: the hub stopped, the proof checks against the pinned keys alone
    hub.stop()
    verified = audit.json("verify", str(proof))
    assert verified["verified"] is True
    assert verified["receipts_verified"] == 2
    keys = (verified["hub_key"], verified["authority"])
    elsewhere = subprocess.run(
        [AUDIT_EXE, "verify", "--hub-key", keys[0], "--authority", keys[1], str(proof)],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert elsewhere.returncode == 0, elsewhere.stderr
    wrong = subprocess.run(
        [AUDIT_EXE, "verify", "--hub-key", "0000:1111", "--authority", keys[1], str(proof)],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )  # fmt: skip
    assert wrong.returncode == 3
    data = proof.read_bytes()
    for position in (0, 7, len(data) // 3, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[position] ^= 0x01
        broken = tmp_path / f"broken-{position}.proof"
        broken.write_bytes(bytes(bad))
        result = audit.run("verify", str(broken), ok=False)
        assert result.returncode == 3, (position, result.stderr)
        assert "ALARM:" in result.stderr

    report = audit.run(
        "report", "--offline", "--from", "2020-01-01", "--to", "2099-12-31", "--format", "csv"
    ).stdout.splitlines()
    assert report[0].startswith("organ,sent,addressed,received,registered")
    rows = {line.split(",")[0]: line.split(",") for line in report[1:]}
    assert rows[province.code][1] == "1"
    assert rows[xa.code][4] == "1"  # registered
    assert rows[xa.code][7] == "1"  # hỏa tốc, registered at once: on time
    late = audit.json("overdue", "--offline")
    assert late["count"] == 0
    status = audit.json("status")
    assert status["mirror_size"] >= cp["size"]
    assert status["alarms"] == []


def _rewrite(hub: Hub, index: int, new: bytes) -> None:
    """Rewrite entry ``index`` and everything that covers it, re-signing the newest
    checkpoint with the hub's own key (the hub must be stopped)."""
    keys = load_keys(hub.data)
    db = sqlite3.connect(hub.data / "hub.sqlite3")
    try:
        rows = db.execute("SELECT idx, data FROM log_entries ORDER BY idx").fetchall()
        data = [new if i == index else bytes(d) for i, d in rows]
        tree = MemoryHashStore()
        hashes = [h for d in data for h in tree.append(leaf_hash(d))]
        origin = f"lienthong.hub/{hub.data.name if False else 'lienthong'}"
        note = sign_checkpoint(
            Checkpoint(origin, tree.size, tree.root(), (f"time {int(time.time())}",)),
            log_signer(keys.hub, origin),
        )
        db.execute(
            "UPDATE log_entries SET data = ?, leaf_hash = ? WHERE idx = ?",
            (new, leaf_hash(new), index),
        )
        db.execute("DELETE FROM log_hashes")
        db.executemany("INSERT INTO log_hashes(level, idx, hash) VALUES (?, ?, ?)", hashes)
        db.execute("DELETE FROM log_cosignatures WHERE size = ?", (tree.size,))
        db.execute(
            "UPDATE log_checkpoints SET root = ?, note = ? WHERE size = ?",
            (tree.root(), note.decode(), tree.size),
        )
        db.commit()
    finally:
        db.close()


def _receipt_index(hub: Hub, status: str) -> tuple[int, bytes]:
    db = sqlite3.connect(hub.data / "hub.sqlite3")
    try:
        for idx, data in db.execute("SELECT idx, data FROM log_entries ORDER BY idx"):
            event = parse_event(bytes(data))
            if event.kind == "receipt" and event.fields["status"] == status:
                return int(idx), bytes(data)
    finally:
        db.close()
    raise AssertionError(f"no receipt {status}")


def test_a_forked_log_is_caught_by_witnesses_and_auditors(hub: Hub, tmp_path: Path) -> None:
    province = office(hub, tmp_path, "TU", "Văn phòng Tỉnh ủy")
    xa = office(hub, tmp_path, "DU", "Đảng ủy xã Yên Lạc", parent=province)
    first, _ = auditor(hub, tmp_path, "a")
    pid = directive(province, xa, tmp_path)
    settle(hub)
    province.json("sync")
    seen = first.json("checkpoint")
    (tmp_path / "a-checkpoint.txt").write_text(seen["note"], encoding="utf-8")

    # the operator stops the hub and forks the log: Yên Lạc's 03 becomes a 06
    hub.stop()
    idx, data = _receipt_index(hub, "03")
    event = parse_event(data)
    f = event.fields
    forged = encode_event(
        "receipt", event.at, packet_id=f["packet_id"], envelope_digest=f["envelope_digest"],
        organ=f["organ"], status="06",
        receipt=f["receipt"].replace(b"\x6203", b"\x6206", 1),
    )  # fmt: skip
    _rewrite(hub, idx, forged)
    hub.start(port=hub.port)

    second, _ = auditor(hub, tmp_path, "b")
    refused = second.run("checkpoint", "--witness", province.code, "--threshold", "1", ok=False)
    assert refused.returncode == 1
    assert "witnesses_insufficient" in refused.stderr
    assert "0 valid cosignatures" in refused.stderr

    # the witness: its next sync finds the log inconsistent, says so, cosigns nothing
    synced = province.run("sync", ok=False)
    assert synced.returncode == 3
    assert "checkpoint_inconsistent" in synced.stderr
    watch = province.run("status", "--json", ok=False)
    assert watch.returncode == 3
    alarm = json.loads(watch.stdout)["alarms"][0]
    assert alarm["code"] == "checkpoint_inconsistent"
    assert alarm["previous"] == seen["note"]

    # auditor A: the fork, both checkpoints printed
    caught = first.run("checkpoint", ok=False)
    assert caught.returncode == 3
    assert caught.stderr.startswith("ALARM: checkpoint_inconsistent: ")
    assert "--- checkpoint seen before ---\n" + seen["note"] in caught.stderr
    assert "--- checkpoint now ---" in caught.stderr
    kept = first.run("status", "--json", ok=False)
    assert kept.returncode == 3
    assert json.loads(kept.stdout)["alarms"][0]["code"] == "checkpoint_inconsistent"
    first.run("status", "--acknowledge")
    assert first.run("status").returncode == 0
    # auditor B, who took the fork on first use, meets A's checkpoint
    second.run("checkpoint", "--no-cosign")
    met = second.run("checkpoint", "--compare", str(tmp_path / "a-checkpoint.txt"), ok=False)
    assert met.returncode == 3
    assert "a fork" in met.stderr
    # and the forged receipt itself fails for anyone who traces the packet
    traced = second.run("trace", pid, ok=False)
    assert traced.returncode == 3
    assert "signature_invalid" in traced.stderr


def test_a_node_raises_an_alarm_when_its_key_is_swapped(hub: Hub, tmp_path: Path) -> None:
    province = office(hub, tmp_path, "TU", "Văn phòng Tỉnh ủy")
    xa = office(hub, tmp_path, "DU", "Đảng ủy xã Yên Lạc", parent=province)
    settle(hub)
    assert xa.run("sync").returncode == 0
    quiet = xa.json("status")
    assert quiet["alarms"] == []
    assert quiet["witness_cosigned_size"] == quiet["checkpoint"]["size"]

    # the operator signs a new entry for Yên Lạc with a key of its own, without logging it
    keys = load_keys(hub.data)
    db = sqlite3.connect(hub.data / "hub.sqlite3")
    try:
        raw, serial = db.execute(
            "SELECT entry, serial FROM organs WHERE code = ?", (xa.code,)
        ).fetchone()
        entry = verify_entry(bytes(raw), keys.authority.public_key()).entry
        pub = SigningPrivateKey.generate().public_key()
        an_hour_ago = int(time.time()) - 3600
        swapped = replace(
            entry,
            signing_keys=(
                *entry.signing_keys,
                KeyRecord(pub.alg, pub.raw, an_hour_ago, an_hour_ago + 10**7),
            ),
            serial=serial + 1,
            issued_at=an_hour_ago,  # the operator backdates it, as if it had always been so
        )
        db.execute(
            "UPDATE organs SET entry = ?, serial = ? WHERE code = ?",
            (sign_entry(swapped, keys.authority), serial + 1, xa.code),
        )
        db.commit()
    finally:
        db.close()
    synced = xa.run("sync", ok=False)
    assert synced.returncode == 3, synced.stderr
    assert "ALARM: key_changed" in synced.stderr
    assert "never generated" in synced.stderr
    status = xa.run("status", "--json", ok=False)
    assert status.returncode == 3
    codes = {a["code"] for a in json.loads(status.stdout)["alarms"]}
    assert codes == {"key_changed", "directory_entry_not_logged"}
    # a packet's status shows it too
    readable = xa.run("status", ok=False)
    assert "ALARM: key_changed" in readable.stdout
    # the clerk acknowledges; the alarm comes back while the swap stands
    assert xa.run("status", "--acknowledge").returncode == 0
    assert xa.run("status").returncode == 0
    assert xa.run("sync", ok=False).returncode == 3
    # and the auditors' monitor sees the served entry is not the logged one
    audit, _ = auditor(hub, tmp_path)
    watched = audit.run("monitor", "--once", ok=False)
    assert watched.returncode == 3
    assert "directory_entry_not_logged" in watched.stderr
    assert xa.code in watched.stderr
