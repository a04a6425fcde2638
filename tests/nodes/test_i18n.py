"""Messages in English and Vietnamese."""

from __future__ import annotations

import string

import pytest

from nodes import i18n


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("key", sorted(i18n.MESSAGES))
def test_both_languages_take_the_same_values(key: str) -> None:
    en, vi = i18n.MESSAGES[key]
    assert en
    assert vi
    assert fields(en) == fields(vi), key


@pytest.mark.parametrize(
    ("env", "lang"),
    [
        ({"LANG": "vi_VN.UTF-8"}, "vi"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "C.UTF-8", "LC_ALL": "vi_VN.UTF-8"}, "vi"),
        ({"LANG": "vi_VN.UTF-8", "LC_MESSAGES": "en_GB.UTF-8"}, "en"),
        ({}, "en"),
    ],
)
def test_language_from_the_locale(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], lang: str
) -> None:
    for var in ("LANG", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert i18n.language() == lang


def test_messages_are_formatted() -> None:
    assert i18n.t("register.done", "vi", packet="P", number=5, year=2025) == (
        "Đã vào sổ P với số đến 5/2025."
    )
    assert i18n.t("register.done", "en", packet="P", number=5, year=2025).startswith("Registered")


def test_error_codes_are_explained() -> None:
    assert i18n.explain("body_digest_mismatch", None, "vi").startswith("Nội dung gói tin")
    assert "SHA-256" in i18n.explain("body_digest_mismatch", None, "en")
    assert i18n.explain("passphrase_wrong", "x", "en") == "x"
    assert i18n.explain("unknown_code", None, "en") == "unknown_code"


def test_node_codes_are_known() -> None:
    import re
    from pathlib import Path

    import nodes
    from nodes.errors import NODE_CODES
    from protocol.errors import CODES

    folder = Path(nodes.__file__).parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in folder.glob("*.py"))
    raised = set(re.findall(r'(?:NodeError|KeystoreError|HubError)\(\s*"([a-z_]+)"', source))
    assert raised - set(NODE_CODES) - set(CODES) == set()
