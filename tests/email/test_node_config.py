"""The node's e-mail settings and how it reads the gateway's answers (pure tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.email_transport import EmailConfig, MailUrl, _refusal, email_enabled
from nodes.errors import NodeError
from nodes.home import NodeConfig
from protocol import mail
from protocol.errors import RemoteError

GOOD = {
    "mode": "email",
    "hub_address": "lienthong@hub.tinhuy.vn",
    "smtp": "smtp+starttls://hub.tinhuy.vn",
    "imap": "imaps://vanthu%40vanhoi.vn@mail.vanhoi.vn",
}


def config(**email: object) -> NodeConfig:
    return NodeConfig(
        organ="000.00.21.H41", hub_url="https://hub.tinhuy.vn", extra={"email": email}
    )


@pytest.mark.parametrize(
    ("text", "protocol", "tls", "port", "user"),
    [
        ("smtp://127.0.0.1:2525", "smtp", "none", 2525, ""),
        ("smtp+starttls://relay.vn", "smtp", "starttls", 587, ""),
        ("smtps://a%40b.vn@relay.vn", "smtp", "tls", 465, "a@b.vn"),
        ("imap://x@127.0.0.1", "imap", "none", 143, "x"),
        ("imaps://vanthu%40vanhoi.vn@mail.vanhoi.vn", "imap", "tls", 993, "vanthu@vanhoi.vn"),
    ],
)
def test_mail_urls(text: str, protocol: str, tls: str, port: int, user: str) -> None:
    url = MailUrl.parse(text, protocol)
    assert (url.tls, url.port, url.user) == (tls, port, user)
    assert MailUrl.parse(str(url), protocol) == url


@pytest.mark.parametrize("text", ["http://x", "imap://x", "smtp://", "smtp://h:99999"])
def test_bad_smtp_urls(text: str) -> None:
    with pytest.raises(NodeError) as info:
        MailUrl.parse(text, "smtp")
    assert info.value.code == "config_invalid"


def test_config_round_trip_and_checks() -> None:
    cfg = EmailConfig.from_node(config(**GOOD))
    assert cfg.mode == "email"
    assert cfg.imap_url.user == "vanthu@vanhoi.vn"
    assert EmailConfig(**cfg.to_json()).check() == cfg
    assert EmailConfig.from_node(NodeConfig(organ="A", hub_url="http://h")).mode == "http"
    for bad in (
        {**GOOD, "mode": "pigeon"},
        {**GOOD, "hub_address": "no-at-sign"},
        {**GOOD, "after": "archive"},
        {**GOOD, "idle": 3600},
        {**GOOD, "unknown_key": 1},
    ):
        with pytest.raises(NodeError):
            EmailConfig.from_node(config(**bad))


def test_the_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("mật khẩu\nignored\n", encoding="utf-8")
    cfg = EmailConfig(**{**GOOD, "imap_password_file": str(secret)})
    assert cfg.password("imap") == "mật khẩu"
    monkeypatch.setenv("LIENTHONG_MAIL_PASSWORD", "từ biến môi trường")
    assert cfg.password("smtp") == "từ biến môi trường"


def test_gateway_refusals_read_back_as_the_http_codes() -> None:
    reply = mail.smtp_refusal(RemoteError("signature_invalid"))
    code, text = int(reply[:3]), reply[4:]
    err = _refusal(code, text)
    assert (err.code, err.status, err.transient) == ("signature_invalid", 422, False)
    reply = mail.smtp_refusal(RemoteError("secrecy_not_by_email", "Mật documents never"))
    err = _refusal(int(reply[:3]), reply[4:])
    assert (err.code, err.status) == ("secrecy_not_by_email", 403)
    assert err.detail == "Mat documents never"  # SMTP replies are 7-bit
    # A plain relay's refusal: no Lienthong code, kept as smtp_<n>.
    err = _refusal(550, "5.1.1 no such user")
    assert err.code == "smtp_550"
    assert not err.transient
    assert _refusal(451, "4.3.0 try later").transient


def test_smtp_reply_codes_by_kind_of_refusal() -> None:
    assert mail.smtp_refusal(RemoteError("size_limit_exceeded")).startswith("552 5.3.4 ")
    assert mail.smtp_refusal(RemoteError("body_digest_mismatch")).startswith("554 5.7.7 ")
    assert mail.smtp_refusal(RemoteError("transport_not_allowed")).startswith("550 5.7.1 ")
    assert mail.smtp_refusal(RemoteError("secrecy_not_by_email")).startswith("550 5.7.1 ")
    assert mail.smtp_refusal(RemoteError("mail_invalid")).startswith("554 5.6.0 ")
    pid = bytes(range(16))
    assert mail.accepted_packet(mail.accepted_reply(pid)[4:]) == pid
    assert mail.accepted_packet(mail.accepted_reply(pid, "stored")) is None
    assert mail.accepted_packet("2.0.0 Ok: queued as 4F2A1") is None


def test_email_is_enabled_by_mode() -> None:
    assert email_enabled(config(**GOOD))
    assert email_enabled(config(**{**GOOD, "mode": "fallback"}))
    assert not email_enabled(config(mode="http"))
