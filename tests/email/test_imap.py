"""The node's IMAP side (nodes.email_transport.ImapMailbox) against a real Dovecot.

Only Lienthong messages are read; only what the caller says it stored is moved (or
deleted by UID, never a blanket expunge); what is not ours is flagged and left; IDLE wakes
on new mail, times out cleanly and can be interrupted; plain, STARTTLS and implicit TLS;
a Vietnamese password."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodes.email_transport import REJECTED, EmailConfig, ImapMailbox, MailUnavailable

from .servers import Dovecot, self_signed

USER = "vanthu.vanhoi@lienthong.test"
PASSWORD = "mật khẩu Đảng ủy xã Vân Hội"


def lienthong(n: int) -> bytes:
    return (
        f"From: lienthong@hub.test\r\nTo: {USER}\r\nLienthong-Version: 1\r\n"
        f"Lienthong-Kind: packet\r\nSubject: [Lienthong] {n}\r\n\r\nbody {n}\r\n"
    ).encode()


PERSONAL = (
    f"From: bithu@vanhoi.vn\r\nTo: {USER}\r\nSubject: =?utf-8?q?H=E1=BB=8Dp?=\r\n\r\n14h\r\n"
).encode()


def config(dovecot: Dovecot, tmp_path: Path, scheme: str = "imap", **extra: object) -> EmailConfig:
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    port = dovecot.imaps_port if scheme == "imaps" else dovecot.port
    return EmailConfig(
        mode="email",
        hub_address="lienthong@hub.test",
        smtp="smtp://127.0.0.1:25",
        imap=f"{scheme}://{USER.replace('@', '%40')}@127.0.0.1:{port}",
        imap_password_file=str(secret),
        **extra,  # type: ignore[arg-type]
    ).check()


@pytest.fixture
def box(dovecot: Dovecot, tmp_path: Path) -> Iterator[ImapMailbox]:
    dovecot.add_user(USER, PASSWORD)
    mailbox = ImapMailbox(config(dovecot, tmp_path))
    try:
        yield mailbox
    finally:
        mailbox.close()


def test_reads_only_lienthong_mail_and_moves_only_what_was_stored(
    dovecot: Dovecot, box: ImapMailbox
) -> None:
    for data in (lienthong(1), PERSONAL, lienthong(2), lienthong(3)):
        dovecot.append(USER, data)
    got = box.fetch()
    assert [data for _, data in got] == [lienthong(1), lienthong(2), lienthong(3)]
    first, _second, third = (uid for uid, _ in got)
    box.settle(done=[first], rejected=[third])
    # The stored one moved; the unreadable one flagged and left; the rest untouched.
    assert dovecot.fetch_all(USER, "Lienthong") == [lienthong(1)]
    assert sorted(dovecot.fetch_all(USER)) == sorted([PERSONAL, lienthong(2), lienthong(3)])
    assert [data for _, data in box.fetch()] == [lienthong(2)]
    with dovecot.imap(USER) as conn:
        conn.select("INBOX", readonly=True)
        _, found = conn.uid("SEARCH", "KEYWORD", REJECTED)
        assert found[0] == third


def test_delete_mode_expunges_only_by_uid(dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.add_user(USER, PASSWORD)
    for data in (lienthong(1), PERSONAL):
        dovecot.append(USER, data)
    # A person marked their own mail deleted (and has not expunged yet).
    with dovecot.imap(USER) as conn:
        conn.select("INBOX")
        conn.store("2", "+FLAGS", "(\\Deleted)")
    box = ImapMailbox(config(dovecot, tmp_path, after="delete"))
    try:
        [(uid, _)] = box.fetch()
        box.settle(done=[uid], rejected=[])
    finally:
        box.close()
    assert dovecot.fetch_all(USER) == [PERSONAL]  # still there, still theirs to expunge


def test_idle_wakes_on_new_mail_and_times_out(dovecot: Dovecot, box: ImapMailbox) -> None:
    assert box.fetch() == []
    assert box.can_idle
    started = time.monotonic()
    assert box.idle(1.0) is False  # nothing came: a clean timeout
    assert 0.9 < time.monotonic() - started < 5
    assert box.fetch() == []  # reconnected after the timeout
    timer = threading.Timer(0.5, dovecot.append, (USER, lienthong(7)))
    timer.start()
    started = time.monotonic()
    try:
        assert box.idle(20.0) is True
    finally:
        timer.join()
    assert time.monotonic() - started < 10
    assert [data for _, data in box.fetch()] == [lienthong(7)]


def test_idle_can_be_interrupted(box: ImapMailbox) -> None:
    box.fetch()
    threading.Timer(0.5, box.interrupt).start()
    started = time.monotonic()
    with pytest.raises(MailUnavailable):
        box.idle(30.0)
    assert time.monotonic() - started < 10


def test_wrong_password_is_a_clear_error(dovecot: Dovecot, tmp_path: Path) -> None:
    dovecot.add_user(USER, "another password")
    box = ImapMailbox(config(dovecot, tmp_path))
    with pytest.raises(MailUnavailable) as info:
        box.fetch()
    assert "IMAP 127.0.0.1" in info.value.detail


@pytest.mark.parametrize("scheme", ["imaps", "imap+starttls"])
def test_tls(dovecot_exe: str, tmp_path: Path, scheme: str) -> None:
    cert, key = self_signed(tmp_path / "tls")
    with Dovecot(dovecot_exe, tls=(cert, key)) as server:
        server.add_user(USER, PASSWORD)
        server.append(USER, lienthong(1))
        box = ImapMailbox(config(server, tmp_path, scheme, ca_file=str(cert)))
        try:
            [(_, data)] = box.fetch()
            assert data == lienthong(1)
        finally:
            box.close()
        untrusted = ImapMailbox(config(server, tmp_path, scheme))
        with pytest.raises(MailUnavailable):
            untrusted.fetch()
