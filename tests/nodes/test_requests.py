"""What a clerk asks to send: command-line values and a watch folder's send.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodes.errors import NodeError
from nodes.requests import SendRequest, from_send_json, split_codes


def test_split_codes() -> None:
    assert split_codes("A,B, C") == ["A", "B", "C"]
    assert split_codes(["A,B", "B", "C"]) == ["A", "B", "C"]
    assert split_codes(None) == []
    with pytest.raises(NodeError):
        split_codes(5)


def test_send_json(tmp_path: Path) -> None:
    (tmp_path / "Báo cáo.pdf").write_bytes(b"x")
    (tmp_path / "send.json").write_text("{}", encoding="utf-8")
    (tmp_path / ".ready").touch()
    req = from_send_json(
        tmp_path,
        {
            "to": "A,B",
            "subject": "Báo cáo quý III",
            "type": "BC",
            "urgency": "hoa-toc",
            "number": "12",
        },
    )
    assert req.to == ["A", "B"]
    assert req.files == [tmp_path / "Báo cáo.pdf"]
    assert (req.doc_type, req.urgency, req.number) == ("BC", 3, 12)
    assert req.source == f"watch:{tmp_path.name}"


@pytest.mark.parametrize(
    "doc",
    [
        {"subject": "Thiếu nơi nhận"},
        {"to": "A", "subject": ""},
        {"to": "A", "subject": "x", "urgency": "gap"},
        {"to": "A", "subject": "x", "due": "15/10/2025"},
        {"to": "A", "subject": "x", "files": ["../ngoai.pdf"]},
        {"to": "A", "subject": "x", "unknown": 1},
        {"to": "A", "subject": "x", "number": True},
    ],
)
def test_send_json_refusals(tmp_path: Path, doc: dict[str, object]) -> None:
    with pytest.raises(NodeError):
        from_send_json(tmp_path, doc)


def test_request_is_normalised() -> None:
    req = SendRequest(subject="  Ke\u0302\u0301 hoa\u0323ch ", files=[], to=["A"]).check()
    assert req.subject == "Kế hoạch"
    with pytest.raises(NodeError):
        SendRequest(subject="x", files=[], to=["A"], in_reply_to="not-an-id").check()
