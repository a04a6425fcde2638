"""End to end: real hub and node processes, documents through the command line.

Every check the node makes before it releases a document is exercised through the
processes an office runs: ``lienthong-node send`` seals, ``sync`` fetches, verifies and
opens, ``status`` shows the receipts with their signatures verified.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import unicodedata
from pathlib import Path

import pytest

from .conftest import OfficeFactory
from .harness import Hub, Node, files_of, unique, wait_for

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def history(status: dict[str, object], organ: str) -> list[dict[str, object]]:
    for rec in status["recipients"]:  # type: ignore[attr-defined]
        if rec["organ"] == organ:
            return list(rec["history"])
    raise AssertionError(f"{organ} is not a recipient")


def test_send_sync_inbox_and_verified_receipt(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    docs = tmp_path / "docs"
    pdf = os.urandom(300_000)
    text = ("Nội dung kế hoạch tổng kết năm 2025.\n" * 2000).encode()
    files = [
        write(docs, nfd("Báo cáo quý III.pdf"), pdf),  # NFD, as macOS writes names
        write(docs, "Kế hoạch tổng kết.txt", text),  # NFC
        write(docs, "Phụ lục trống.txt", b""),  # an empty file
    ]
    pid = province.send(
        "--to", xa.code, "--type", "KH", "--subject", nfd(SUBJECT), "--urgency", "khan",
        *map(str, files),
    )  # fmt: skip

    report = xa.json("sync")
    assert report["received"] == [pid]
    assert report["refused"] == []
    [item] = xa.inbox()
    assert item["packet_id"] == pid
    assert item["verified"] is True
    assert item["subject"] == SUBJECT  # NFC, whatever form was typed
    assert item["reference"] == f"01-KH/{province.code.split('.')[0]}"
    folder = Path(item["folder"])
    assert folder == xa.home / "inbox" / pid
    received = files_of(folder)
    assert received.pop("metadata.json")
    assert received == {
        nfc("Báo cáo quý III.pdf"): pdf,
        "Kế hoạch tổng kết.txt": text,
        "Phụ lục trống.txt": b"",
    }
    meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert meta["subject"] == SUBJECT
    assert meta["sender"]["organ"] == province.code
    assert meta["urgency"]["label"] == "khẩn"
    assert all(meta["verified"].values())
    assert not list((xa.home / "tmp").iterdir())

    synced = province.json("sync")
    assert synced["checkpoint"] >= 1  # the log's checkpoint, verified with the pinned hub key
    status = province.json("status", pid)
    assert status["all_verified"] is True
    steps = history(status, xa.code)
    assert [s["status"] for s in steps if s["source"] == "office"] == ["01"]
    assert all(s["verified"] for s in steps)
    assert status["accepted_receipt_verified"] is True


# 20 kB: the body comes inline in the mailbox answer; 200 kB: it is downloaded.
@pytest.mark.parametrize("size", [20_000, 200_000])
def test_tampered_body_is_never_released(
    hub: Hub, office: OfficeFactory, tmp_path: Path, size: int
) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    doc = write(tmp_path / "docs", "Chỉ thị.pdf", os.urandom(size))
    pid = province.send("--to", xa.code, "--type", "CT", "--subject", "Chỉ thị số 05", str(doc))

    blob = hub.blob_path(province.json("show", pid)["body_sha256"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of the stored body, on the hub's disk
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))

    before = len(hub.statuses("/v1/bodies/"))
    report = xa.json("sync")
    assert report["received"] == []
    assert [r["code"] for r in report["refused"]] == ["body_digest_mismatch"]
    # The small body came inline, checked all the same; only the large one was downloaded.
    inline = size < 64 * 1024
    downloads = wait_for(lambda: hub.statuses("/v1/bodies/")[before:], timeout=1 if inline else 10)
    assert bool(downloads) is not inline
    assert list((xa.home / "inbox").iterdir()) == []
    assert list((xa.home / "tmp").iterdir()) == []
    [item] = xa.inbox()
    assert item["verified"] is False
    assert item["error_code"] == "body_digest_mismatch"
    assert item["folder"] is None

    province.json("sync")
    status = province.json("status", pid)
    [rec] = status["recipients"]
    assert rec["state"] == "02"
    [refusal] = [s for s in rec["history"] if s["status"] == "02"]
    assert refusal["verified"] is True
    assert "body_digest_mismatch" in refusal["reason"]


@pytest.mark.slow
def test_queued_while_the_hub_is_down(tmp_path: Path) -> None:
    hub = Hub(tmp_path).init().start()
    codes = unique("TU"), unique("DU")
    province = Node(tmp_path, "tinh-uy", codes[0])
    xa = Node(tmp_path, "xa", codes[1])
    try:
        province.init(hub, hub.token_for(codes[0], "Văn phòng Tỉnh ủy", level="province"))
        xa.init(hub, hub.token_for(codes[1], "Đảng ủy xã Yên Lạc", parent=codes[0]))
        doc = write(tmp_path / "docs", "Báo cáo.pdf", os.urandom(50_000))
        province.json("sync")  # in touch with the hub earlier: the directory is cached
        port = hub.port
        hub.stop()

        sent = province.json("send", "--to", xa.code, "--subject", "Báo cáo quý III", str(doc))
        assert sent["state"] == "queued"  # sealed from the cached directory, waiting
        down = province.run("sync", ok=False)
        assert down.returncode == 1
        assert "hub_unreachable" in down.stderr
        assert province.json("info")["outbox"] == 1

        # Longer offline than the hub's clock-skew window: the first submission is refused
        # (clock_skew) and the node seals the packet again, same id, fresh time and keys.
        time.sleep(2.5)
        hub.start(port=port, clock_skew="1")
        report = province.json("sync")
        assert report["sent"] == [sent["packet_id"]]
        assert report["failed"] == []
        assert hub.statuses("/v1/packets")[:1] == [422]
        assert province.json("info")["outbox"] == 0
        assert xa.json("sync")["received"] == [sent["packet_id"]]

        # The daemons keep going through an outage: back-off while the hub is away, the
        # queued packet goes out and arrives once it is back.
        hub.stop()
        province.start()
        xa.start()
        later = province.json("send", "--to", xa.code, "--subject", "Báo cáo bổ sung", str(doc))
        assert later["state"] == "queued"
        time.sleep(2)
        hub.start(port=port)
        arrived = wait_for(lambda: (xa.home / "inbox" / later["packet_id"]).is_dir(), timeout=40)
        assert arrived, (province.daemon_log.read_text(), xa.daemon_log.read_text())
        assert "Hub unreachable" in province.daemon_log.read_text()
        assert province.stop() == 0
        assert xa.stop() == 0
    finally:
        province.stop()
        xa.stop()
        hub.stop()


def test_daemon_acknowledges_with_its_next_long_poll(
    hub: Hub, office: OfficeFactory, tmp_path: Path
) -> None:
    """The daemon sends what it stored with its next long-poll (``POST /v1/mailbox``), not
    as a request of its own: the delivery is acknowledged (its inline body ``fetched``)
    while that long-poll is still waiting, with no ``/v1/mailbox/ack``."""
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    doc = write(tmp_path / "docs", "Giấy mời.pdf", b"%PDF-1.7 giay moi hop")

    def calls() -> list[tuple[str, str]]:
        return [
            (line["method"], line["route"])
            for line in list(hub.lines)
            if line.get("event") == "request"
            and line.get("organ") == xa.code
            and str(line.get("route")).startswith("/v1/mailbox")
        ]

    def fetched() -> bool:
        [rec] = province.json("status", pid)["recipients"]
        return rec["fetched_at"] is not None

    xa.start()
    pid = province.send("--to", xa.code, "--subject", "Giấy mời họp", str(doc))
    assert wait_for(lambda: (xa.home / "inbox" / pid).is_dir(), timeout=30)
    assert wait_for(fetched, timeout=30)
    # Requests are logged when they end: the answered GET only; the POST that carried
    # the acknowledgement is waiting for the next item.
    assert calls() == [("GET", "/v1/mailbox")]
    assert xa.stop() == 0


def test_recall_accepted_removes_the_document(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    phuong = office("DU2", "Đảng ủy phường Tam Hồng", parent=province, level="commune")
    doc = write(tmp_path / "docs", "Thông báo.pdf", b"%PDF-1.7 thong bao")
    pid = province.send(
        "--to-children", province.code, "--type", "TB", "--subject", "Thông báo", str(doc)
    )
    for node in (xa, phuong):
        assert node.json("sync")["received"] == [pid]
    xa.json("register", pid)

    asked = province.json("recall", pid, "--reason", "Ban hành nhầm đối tượng")
    assert sorted(asked["recipients"]) == sorted([xa.code, phuong.code])

    xa.json("sync")
    [item] = xa.inbox()
    assert item["state"] == "13"
    assert item["recall_reason"] == "Ban hành nhầm đối tượng"
    assert Path(item["folder"]).is_dir()
    xa.json("recall-accept", pid)
    [item] = xa.inbox()
    assert item["state"] == "recalled"
    assert item["folder"] is None
    assert not (xa.home / "inbox" / pid).exists()

    phuong.json("sync")
    refused = phuong.run("recall-refuse", pid, "--json", ok=False)
    assert refused.returncode == 2  # --reason is required
    phuong.json("recall-refuse", pid, "--reason", "Đã triển khai thực hiện")

    province.json("sync")
    status = province.json("status", pid)
    states = {r["organ"]: r["state"] for r in status["recipients"]}
    assert states == {xa.code: "recalled", phuong.code: "01"}
    assert status["all_verified"] is True


def test_register_numbering(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    doc = write(tmp_path / "docs", "Văn bản.pdf", b"%PDF-1.7")
    ids = [
        province.send("--to", xa.code, "--type", kind, "--subject", f"Văn bản {i}", str(doc))
        for i, kind in enumerate(["CV", "CV", "BC"])
    ]
    abbrev = province.code.split(".")[0]
    refs = [province.json("show", pid)["reference"] for pid in ids]
    assert refs == [f"01-CV/{abbrev}", f"02-CV/{abbrev}", f"01-BC/{abbrev}"]
    taken = province.run("send", "--to", xa.code, "--type", "CV", "--number", "2",
                         "--subject", "Trùng số", str(doc), ok=False)  # fmt: skip
    assert taken.returncode == 1
    assert "register_number_taken" in taken.stderr

    xa.json("sync")
    numbers = [xa.json("register", pid)["incoming_number"] for pid in reversed(ids)]
    assert numbers == [1, 2, 3]  # one sequence for all types, in order of registration
    again = xa.run("register", ids[0], ok=False)
    assert again.returncode == 1
    assert "transition_invalid" in again.stderr

    year = xa.json("registers", "export", "--kind", "in", "--year", str(_year()))
    assert year["rows"] == 3
    csv_text = xa.run("registers", "export", "--kind", "in", "--year", str(_year())).stdout
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("Ngày đến,Số đến,Nơi gửi")
    assert len(lines) == 4
    out = province.run("registers", "export", "--kind", "out", "--year", str(_year())).stdout
    assert f"01-BC/{abbrev}" in out


def _year() -> int:
    from nodes.registers import vn_date

    return vn_date().year


def test_duplicate_submission_delivers_once(
    hub: Hub, office: OfficeFactory, tmp_path: Path
) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    doc = write(tmp_path / "docs", "Công văn.pdf", os.urandom(2048))
    pid = province.send("--to", xa.code, "--subject", "Công văn gửi lại", str(doc))
    # As if the hub's answer had been lost: the packet goes back to the outbox with its
    # body (taken from the hub's store: the sender dropped its copy once accepted).
    spool = province.home / "spool" / f"{pid}.body"
    shutil.copyfile(hub.blob_path(province.json("show", pid)["body_sha256"]), spool)
    db = sqlite3.connect(province.home / "node.sqlite3")
    with db:
        db.execute(
            "UPDATE sent SET state = 'queued', body_path = ? WHERE packet_id = ?",
            (str(spool), pid),
        )
    db.close()

    report = province.json("sync")
    assert report["sent"] == [pid]  # the hub answered with the original acceptance
    assert report["failed"] == []
    assert xa.json("sync")["received"] == [pid]
    assert xa.json("sync")["received"] == []
    assert len(xa.inbox()) == 1
    [rec] = province.json("status", pid)["recipients"]
    assert [h["status"] for h in rec["history"] if h["source"] == "office"] == ["01"]


def test_interrupted_download_resumes(hub: Hub, office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    payload = os.urandom(3 * 1024 * 1024)
    doc = write(tmp_path / "docs", "Tài liệu lớn.pdf", payload)
    pid = province.send("--to", xa.code, "--subject", "Tài liệu hội nghị", str(doc))
    blob = hub.blob_path(province.json("show", pid)["body_sha256"])
    # The first half arrived before the connection broke.
    (xa.home / "tmp" / f"{pid}.body").write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    before = len(hub.statuses("/v1/bodies/"))
    assert xa.json("sync")["received"] == [pid]
    assert files_of(xa.home / "inbox" / pid)["Tài liệu lớn.pdf"] == payload
    assert wait_for(lambda: hub.statuses("/v1/bodies/")[before:], timeout=5) == [206]


def test_daemons_and_watch_folders(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    chi_bo = office("CB", "Chi bộ Trường THCS Tam Hồng", parent=province, level="grassroots")
    province.start()
    chi_bo.start()
    folder = chi_bo.home / "outbox" / "bao-cao-quy-3"
    write(folder, nfd("Báo cáo quý III.pdf"), b"%PDF-1.7 bao cao")
    (folder / "send.json").write_text(
        json.dumps({"to": province.code, "subject": "Báo cáo quý III", "type": "BC"}),
        encoding="utf-8",
    )
    assert not wait_for(lambda: list((province.home / "inbox").iterdir()), timeout=3)
    (folder / ".ready").touch()  # the copy is complete

    sent = wait_for(lambda: list((chi_bo.home / "outbox" / "sent").iterdir()), timeout=30)
    assert [p.name for p in sent] == ["bao-cao-quy-3"]
    pid = json.loads((sent[0] / "result.json").read_text(encoding="utf-8"))["packet_id"]
    inbox = wait_for(lambda: list((province.home / "inbox").iterdir()), timeout=30)
    assert [p.name for p in inbox] == [pid]
    assert (inbox[0] / "Báo cáo quý III.pdf").read_bytes() == b"%PDF-1.7 bao cao"

    def receipt_seen() -> bool:
        return any(
            h["status"] == "01" and h["verified"]
            for h in history(chi_bo.json("status", pid, "--offline"), province.code)
        )

    assert wait_for(receipt_seen, timeout=30)
    bad = chi_bo.home / "outbox" / "sai"
    write(bad, "a.txt", b"x")
    (bad / "send.json").write_text('{"subject": "Thiếu nơi nhận"}', encoding="utf-8")
    (bad / ".ready").touch()
    failed = wait_for(lambda: list((chi_bo.home / "outbox" / "failed").iterdir()), timeout=30)
    error = json.loads((failed[0] / "error.json").read_text(encoding="utf-8"))
    assert error["code"] == "recipients_missing"

    assert province.stop() == 0  # SIGTERM: a clean stop
    assert chi_bo.stop() == 0


def test_local_errors_are_clear(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    wrong = province.run("sync", ok=False, env=province.env(LIENTHONG_PASSPHRASE="sai mật khẩu"))
    assert wrong.returncode == 1
    assert "passphrase_wrong" in wrong.stderr

    empty = Node(tmp_path, "chua-khoi-tao", "X")
    missing = empty.run("sync", ok=False)
    assert missing.returncode == 1
    assert "not_initialised" in missing.stderr

    (province.home / "keystore.json").chmod(0o644)
    loose = province.run("sync", "--json", ok=False)
    assert loose.returncode == 1
    assert json.loads(loose.stdout)["error"]["code"] == "keystore_permissions"
    (province.home / "keystore.json").chmod(0o600)

    vi = province.run("status", "0000", ok=False, env=province.env(LANG="vi_VN.UTF-8"))
    assert vi.returncode == 1
    assert vi.stderr.startswith("lỗi: packet_not_found")


def test_refusals_reach_the_clerk(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    xa = office("DU", "Đảng ủy xã Yên Lạc", parent=province, level="commune")
    phuong = office("DU2", "Đảng ủy phường Tam Hồng", parent=province, level="commune")
    chi_bo = office("CB", "Chi bộ Trường THCS Tam Hồng", parent=xa, level="grassroots")
    chi_bo.json("sync")  # learn the neighbourhood
    doc = write(tmp_path / "docs", "Báo cáo.pdf", b"%PDF-1.7")
    # The cell's parent's sibling is neither above nor below it: the hub refuses the route.
    refused = chi_bo.run(
        "send", "--to", phuong.code, "--subject", "Gửi vượt tuyến", str(doc), ok=False
    )
    assert refused.returncode == 1
    assert "route_not_allowed" in refused.stderr
    secret = chi_bo.run("send", "--to", xa.code, "--secrecy", "toi-mat", "--subject", "Mật",
                        str(doc), ok=False)  # fmt: skip
    assert secret.returncode == 1
    assert "secrecy_refused" in secret.stderr
    unknown = chi_bo.run("send", "--to", "KHONG.CO", "--subject", "x", str(doc), ok=False)
    assert unknown.returncode == 1
    assert "recipient_unknown" in unknown.stderr


def test_hybrid_hub_gets_hybrid_keys(tmp_path: Path) -> None:
    hub = Hub(tmp_path).init(hybrid=True).start()
    try:
        code = unique("TU")
        node = Node(tmp_path, "tinh-uy", code)
        doc = node.init(hub, hub.token_for(code, "Văn phòng Tỉnh ủy", level="province"))
        assert doc["signing_key"]["alg"] == "ed25519+mldsa65"
        assert doc["encryption_key"]["alg"] == "mlkem768x25519"
        assert node.json("info")["hub_key"]["alg"] == "ed25519+mldsa65"
    finally:
        hub.stop()
