"""End to end over e-mail: real hub and node processes, a real relay, a real Dovecot.

* An HTTPS office sends to an e-mail-only office; the hub mails the packet through the
  relay into the office's Dovecot mailbox; the office reads it over IMAP, verifies and
  opens it, answers with receipt 01 by SMTP to the hub's gateway; the sender sees the 01
  verified.  The e-mail office answers with a report by e-mail, which the hub ingests.
* HTTPS unreachable for an office: it sends by e-mail instead, the hub ingests it and
  answers with its accepted receipt by e-mail.
* The relay down for a while: the hub retries, nothing is lost, and the recipient's
  mailbox gets each message once.
* The daemon of an e-mail office, waiting with IMAP IDLE.
* Junk sent to the running hub's gateway: refused with its code, logged.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from protocol import mail
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import DocumentMetadata, Recipient, parse_envelope, seal_packet
from tests.e2e.harness import HUB_EXE, Hub, Node, clean_env, unique, wait_for

from .processes import GATEWAY, MailHub, mail_node_args, set_config
from .servers import Dovecot, Received, ThreadedRelay

pytestmark = pytest.mark.timeout(240)

SUBJECT = "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025"
PASSWORD = "mật-khẩu-hộp-thư-2025"


def address(code: str) -> str:
    return f"vanthu.{code.lower()}@lienthong.test"


class World:
    """A hub, its relay delivering into Dovecot, and a way to add offices."""

    def __init__(self, root: Path, dovecot: Dovecot) -> None:
        self.root = root
        self.dovecot = dovecot
        self.password_file = root / "mail-password"
        self.password_file.write_text(PASSWORD + "\n", encoding="utf-8")
        self.password_file.chmod(0o600)
        self.relay = ThreadedRelay(deliver=self._deliver).start()
        self.hub = MailHub(root).init().configure(self.relay.port)
        self.hub.start()

    def _deliver(self, got: Received) -> None:
        for rcpt in got.rcpt_tos:
            if rcpt in self.dovecot.users:
                self.dovecot.append(rcpt, got.data)
            elif rcpt == GATEWAY:  # a relay between an office and the hub
                with smtplib.SMTP("127.0.0.1", self.hub.smtp_port, timeout=30) as smtp:
                    smtp.sendmail(got.mail_from, [rcpt], got.data)

    def http_office(self, prefix: str, name: str, parent: Node | None = None) -> Node:
        code = unique(prefix)
        token = self.hub.token_for(code, name, parent=parent.code if parent else None)
        node = Node(self.root, code, code)
        node.init(self.hub, token, "--abbrev", prefix)
        return node

    def mail_office(
        self, prefix: str, name: str, parent: Node, *, transport: str = "email"
    ) -> Node:
        code = unique(prefix)
        mailbox = address(code)
        self.dovecot.add_user(mailbox, PASSWORD)
        transports = ("email",) if transport == "email" else ("http", "email")
        token = self.hub.token_for_email(
            code, name, email=mailbox, parent=parent.code, transports=transports
        )
        node = Node(self.root, code, code)
        node.init(
            self.hub,
            token,
            "--abbrev",
            prefix,
            *mail_node_args(
                transport=transport,
                address=mailbox,
                smtp_port=self.hub.smtp_port,
                imap_port=self.dovecot.port,
                password_file=self.password_file,
            ),
        )
        return node

    def close(self) -> None:
        self.hub.stop()
        self.relay.close()


@pytest.fixture
def world(tmp_path: Path, dovecot: Dovecot) -> Iterator[World]:
    w = World(tmp_path, dovecot)
    try:
        yield w
    finally:
        w.close()


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


def unreachable_hub(node: Node) -> None:
    """Point the office at a port nobody listens on: HTTPS to the hub fails."""
    set_config(node, hub_url="http://127.0.0.1:9")


def test_http_office_to_email_only_office_and_back(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Vân Hội", province)
    unreachable_hub(xa)  # an e-mail-only office never needs HTTPS after enrolment
    pdf = os.urandom(120_000)
    doc = write(tmp_path / "docs", "Báo cáo quý III.pdf", pdf)
    pid = province.send("--to", xa.code, "--type", "KH", "--subject", SUBJECT, str(doc))

    mailbox = address(xa.code)
    assert wait_for(lambda: world.dovecot.count(mailbox) == 1, timeout=30), world.hub.lines[-10:]
    report = xa.json("sync")
    assert report["received"] == [pid], report
    [item] = xa.inbox()
    assert item["verified"] is True
    assert item["subject"] == SUBJECT
    folder = Path(item["folder"])
    assert (folder / "Báo cáo quý III.pdf").read_bytes() == pdf
    # Stored, so moved out of the inbox into the processed folder; nothing else touched.
    assert world.dovecot.count(mailbox) == 0
    assert world.dovecot.count(mailbox, "Lienthong") == 1
    # Receipt 01 went to the hub's gateway by SMTP; the sender sees it, verified.
    province.json("sync")
    status = province.json("status", pid)
    steps = [s for s in history(status, xa.code) if s["source"] == "office"]
    assert [s["status"] for s in steps] == ["01"]
    assert all(s["verified"] for s in steps)

    # The e-mail office answers with a report, by e-mail to the gateway: accepted at once.
    answer = write(tmp_path / "docs", "Báo cáo kết quả.pdf", os.urandom(30_000))
    sent = xa.json("send", "--to", province.code, "--type", "BC", "--subject", "Báo cáo kết quả",
                   "--in-reply-to", pid, str(answer))  # fmt: skip
    assert sent["state"] == "accepted", sent
    assert province.json("sync")["received"] == [sent["packet_id"]]
    # The hub's accepted receipt, its fetched receipt (the province took the body) and the
    # province's 01 come back by e-mail.
    assert wait_for(lambda: world.dovecot.count(mailbox) >= 3, timeout=30)
    xa.json("sync")
    mine = xa.json("status", sent["packet_id"], "--offline")
    assert mine["accepted_receipt_verified"] is True, mine
    steps = [s for s in history(mine, province.code) if s["source"] == "office"]
    assert [s["status"] for s in steps] == ["01"]
    assert world.dovecot.count(mailbox) == 0


def test_office_whose_https_is_down_sends_by_email(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Kim Sơn", province, transport="fallback")
    unreachable_hub(xa)
    doc = write(tmp_path / "docs", "Tờ trình.pdf", os.urandom(40_000))
    sent = xa.json(
        "send", "--to", province.code, "--type", "TTr", "--subject", "Tờ trình", str(doc)
    )
    assert sent["state"] == "accepted", sent  # the gateway accepted it in the SMTP reply
    assert province.json("sync")["received"] == [sent["packet_id"]]
    assert world.hub.refusals() == []
    # The hub's accepted receipt comes back by e-mail; a later sync records it.
    mailbox = address(xa.code)
    assert wait_for(lambda: world.dovecot.count(mailbox) >= 1, timeout=30)
    report = xa.json("sync")  # HTTPS still down: the round completes by e-mail
    assert report["errors"] == [], report
    mine = xa.json("status", sent["packet_id"], "--offline")
    assert mine["accepted_receipt_verified"] is True, mine


def test_relay_down_for_a_while_delivers_once(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Vân Hội", province)
    mailbox = address(xa.code)
    world.relay.stop()
    doc = write(tmp_path / "docs", "Công văn.pdf", os.urandom(20_000))
    pids = [
        province.send("--to", xa.code, "--subject", f"Công văn số {n}", str(doc)) for n in (1, 2)
    ]
    # The hub tries, and defers with back-off (logged), while the relay is away.
    assert wait_for(
        lambda: sum(1 for line in world.hub.lines if line.get("event") == "e-mail deferred") >= 4,
        timeout=30,
    )
    assert world.dovecot.count(mailbox) == 0
    world.relay.start()
    assert wait_for(lambda: world.dovecot.count(mailbox) == 2, timeout=40)
    time.sleep(2)  # more passes of the sender: nothing goes twice
    assert world.dovecot.count(mailbox) == 2
    assert len(world.relay.messages) == 2
    assert sorted(xa.json("sync")["received"]) == sorted(pids)
    # Sent again (by a crash between the relay's 250 and the hub's commit): no duplicate.
    for raw in world.dovecot.fetch_all(mailbox, "Lienthong"):
        world.dovecot.append(mailbox, raw)
    assert xa.json("sync")["received"] == []
    assert len(xa.inbox()) == 2


def test_daemon_of_an_email_office_waits_with_idle(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Vân Hội", province)
    set_config(xa, **{"email.idle": 20})
    xa.start()
    try:
        time.sleep(1.5)  # connected and idling
        doc = write(tmp_path / "docs", "Giấy mời.pdf", os.urandom(10_000))
        pid = province.send("--to", xa.code, "--type", "GM", "--subject", "Giấy mời", str(doc))
        started = time.monotonic()
        assert wait_for(lambda: (xa.home / "inbox" / pid).is_dir(), timeout=30), (
            xa.daemon_log.read_text()
        )
        assert time.monotonic() - started < 15  # woken by IDLE, not the next 20 s round

        # Its receipt 01 reaches the sender.
        def answered() -> bool:
            province.json("sync")
            steps = history(province.json("status", pid), xa.code)
            return any(s["status"] == "01" for s in steps)

        assert wait_for(answered, timeout=30)
    finally:
        assert xa.stop() == 0


def test_junk_to_the_running_gateway_is_refused_and_logged(world: World) -> None:
    async def send() -> tuple[int, str]:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=world.hub.smtp_port, start_tls=False)
        await client.connect()
        try:
            await client.sendmail(
                "spam@example.com",
                [GATEWAY],
                b"From: spam@example.com\r\nSubject: Win\r\n\r\nBuy now\r\n",
            )
        except aiosmtplib.SMTPResponseException as exc:
            return exc.code, exc.message
        finally:
            await client.quit()
        return 250, ""

    code, message = asyncio.run(send())
    assert code == 554
    assert mail.refusal_code(message) is not None
    assert wait_for(lambda: world.hub.refusals() == ["mail_invalid"], timeout=10)


def test_serve_with_smtp_port_needs_the_gateway_address(tmp_path: Path) -> None:
    hub = Hub(tmp_path).init()
    proc = subprocess.run(
        [HUB_EXE, "serve", "--data", str(hub.data), "--smtp-port", "0"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "email.address" in proc.stderr


def test_init_refuses_a_bad_mail_url_before_using_the_token(world: World) -> None:
    code = unique("DU")
    token = world.hub.token_for_email(code, "Đảng ủy xã Vân Hội", email=address(code))
    node = Node(world.root, code, code)
    bad = node.run(
        "init", "--hub", world.hub.url, "--code", code, "--token", token,
        "--transport", "email", "--hub-email", GATEWAY,
        "--smtp", "http://127.0.0.1:25", "--imap", "imap://x@127.0.0.1", ok=False,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "config_invalid" in bad.stderr
    # The token was not spent: a correct init still works.
    node.init(
        world.hub,
        token,
        *mail_node_args(
            transport="email",
            address=address(code),
            smtp_port=world.hub.smtp_port,
            imap_port=world.dovecot.port,
            password_file=world.password_file,
        ),
    )
    assert node.json("info")["organ"] == code


def test_node_touches_only_what_it_stores(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Vân Hội", province)
    mailbox = address(xa.code)
    # A person's mail in the same mailbox, and junk dressed as a Lienthong message.
    personal = (
        "From: =?utf-8?q?B=C3=AD_th=C6=B0?= <bithu@vanhoi.vn>\r\n"
        f"To: {mailbox}\r\nSubject: =?utf-8?q?L=E1=BB=8Bch_h=E1=BB=8Dp?=\r\n\r\nChiều nay 14h.\r\n"
    ).encode()
    junk = (
        f"From: x@example.com\r\nTo: {mailbox}\r\nLienthong-Version: 1\r\n"
        "Lienthong-Kind: packet\r\nSubject: junk\r\n\r\nnot a packet\r\n"
    ).encode()
    # A packet that claims to come from the province, signed with another key.
    forger = SigningPrivateKey.generate()
    stranger = EncryptionPrivateKey.generate()
    envelope, body = seal_packet(
        sender=province.code,
        signing_key=forger,
        recipients=[Recipient(xa.code, stranger.public_key())],
        metadata=DocumentMetadata(subject="Giả mạo", doc_type="CV"),
        files=[("a.pdf", "application/pdf", b"%PDF")],
    )
    forged = mail.to_bytes(
        mail.packet_message(
            parse_envelope(envelope),
            body,
            sender=("lienthong@hub.lienthong.test", "Lienthong"),
            recipient=(mailbox, "Đảng ủy xã Vân Hội"),
            domain="example.com",
            at=int(time.time()),
        )
    )
    for data in (personal, junk, forged):
        world.dovecot.append(mailbox, data)
    report = xa.json("sync")
    assert report["received"] == []
    assert [r["code"] for r in report["refused"]] == ["key_unknown"]
    assert [e["code"] for e in report["errors"]][:1] == ["mail_invalid"]
    # The forged packet was recorded as refused (stored), so it moved; the junk is only
    # flagged and stays; the person's mail is untouched.
    [refused] = xa.inbox()
    assert refused["verified"] is False
    assert world.dovecot.count(mailbox, "Lienthong") == 1
    left = world.dovecot.fetch_all(mailbox)
    assert len(left) == 2
    assert any(b"14h" in m or b"Chi" in m for m in left)
    with world.dovecot.imap(mailbox) as conn:
        conn.select("INBOX", readonly=True)
        _, found = conn.uid("SEARCH", "KEYWORD", "$LienthongRejected")
        assert len((found[0] or b"").split()) == 1
    assert xa.json("sync")["refused"] == []  # nothing read twice


def test_office_sending_through_its_own_relay(world: World, tmp_path: Path) -> None:
    province = world.http_office("TU", "Văn phòng Tỉnh ủy")
    xa = world.mail_office("DU", "Đảng ủy xã Vân Hội", province)
    # The office's mail goes through a relay, not straight to the hub's gateway.
    set_config(xa, **{"email.smtp": f"smtp://127.0.0.1:{world.relay.port}"})
    doc = write(tmp_path / "docs", "Báo cáo.pdf", os.urandom(20_000))
    sent = xa.json("send", "--to", province.code, "--type", "BC", "--subject", "Báo cáo", str(doc))
    assert sent["state"] == "emailed", sent  # a relay's 250 only means "handed over"
    assert wait_for(lambda: province.json("sync")["received"] == [sent["packet_id"]], timeout=30)
    # The hub's accepted receipt comes back by e-mail and completes it.
    assert wait_for(lambda: world.dovecot.count(address(xa.code)) >= 1, timeout=30)
    xa.json("sync")
    mine = xa.json("status", sent["packet_id"], "--offline")
    assert mine["accepted_receipt_verified"] is True, mine
    assert xa.json("show", sent["packet_id"])["state"] == "accepted"
