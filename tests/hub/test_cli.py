"""``lienthong-hub`` commands, run in-process with click's runner on the embedded default."""

from __future__ import annotations

import asyncio
import stat
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from hub import directory
from hub.cli import main
from hub.db import make_engine, make_sessionmaker
from hub.hubkeys import load_keys
from hub.migrate import head_revision
from hub.settings import load_settings
from protocol import signed
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey

COMMANDS = ("init", "serve", "migrate", "enroll", "revoke", "organs", "merge")


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 1, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command: str) -> None:
    out = run(command, "--help")
    assert "Example" in out
    assert "--data" in out


def _enrol_keys(data: Path, code: str, token: str) -> None:
    """What the office's node does with the token (through the same service function)."""
    settings = load_settings(data)
    keys = load_keys(settings.data_dir)
    signing = SigningPrivateKey.generate()
    encryption = EncryptionPrivateKey.generate()
    request = directory.Enrolment(
        token=token,
        organ=code,
        signing_key=signing.public_key(),
        encryption_key=encryption.public_key(),
        proof=signing.sign(signed.CTX_ENROL, directory.enrol_message(token, code)),
    )

    async def work() -> None:
        engine = make_engine(settings.database_url)
        try:
            async with make_sessionmaker(engine).begin() as session:
                await directory.enrol(
                    session, keys, request, settings.key_lifetime, int(time.time())
                )
        finally:
            await engine.dispose()

    asyncio.run(work())


def test_init_enroll_organs_revoke_merge(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    out = run("init", "--data", str(data))
    assert "hub key:" in out
    assert "directory authority:" in out
    for name in ("hub-signing.key", "directory-authority.key"):
        mode = (data / "keys" / name).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
    assert "hub_name" in (data / "hub.toml").read_text()
    # Initialising twice is refused.
    assert "error: local:" in run("init", "--data", str(data), ok=False)

    out = run("migrate", "--data", str(data))
    assert out.strip() == f"database at revision {head_revision()}"

    out = run(
        "enroll",
        "--data",
        str(data),
        "000.00.00.H41",
        "--name",
        "Văn phòng Tỉnh ủy",
        "--level",
        "province",
    )
    token = out.strip().splitlines()[-1]
    assert len(token) == 43
    assert " " not in token
    out = run(
        "enroll",
        "--data",
        str(data),
        "000.00.12.H41",
        "--name",
        "Đảng ủy xã Yên Lạc",
        "--parent",
        "000.00.00.H41",
        "--level",
        "commune",
    )
    commune_token = out.strip().splitlines()[-1]
    run(
        "enroll",
        "--data",
        str(data),
        "000.00.13.H41",
        "--name",
        "Đảng ủy xã Tam Hồng",
        "--parent",
        "000.00.00.H41",
        "--level",
        "commune",
    )
    run(
        "enroll",
        "--data",
        str(data),
        "000.12.03.H41",
        "--name",
        "Chi bộ Trường THCS Tam Hồng",
        "--parent",
        "000.00.12.H41",
        "--level",
        "grassroots",
    )
    # Errors print a code and one line, and exit 1.
    out = run(
        "enroll",
        "--data",
        str(data),
        "000.00.20.H41",
        "--name",
        "X",
        "--parent",
        "000.99.99.H41",
        ok=False,
    )
    assert out.startswith("error: organ_unknown:")
    assert out.count("\n") == 1
    out = run("enroll", "--data", str(data), "bad code", "--name", "X", ok=False)
    assert out.startswith("error: organ_code_invalid:")

    _enrol_keys(data, "000.00.12.H41", commune_token)
    out = run("organs", "--data", str(data))
    assert "Đảng ủy xã Yên Lạc" in out
    assert "not enrolled" in out
    assert "sign ed25519" in out
    assert out.index("000.00.00.H41") < out.index("000.00.12.H41") < out.index("000.12.03.H41")

    assert "error: key_unknown:" in run("revoke", "--data", str(data), "000.00.00.H41", ok=False)
    out = run("revoke", "--data", str(data), "000.00.12.H41")
    assert "serial 2" in out
    assert "revoked" in run("organs", "--data", str(data))

    assert "only since" in run(
        "merge",
        "--data",
        str(data),
        "000.00.12.H41",
        "000.00.13.H41",
        "--from",
        "2025-07-01",
        ok=False,
    )
    day = (date.today() + timedelta(days=30)).isoformat()
    out = run("merge", "--data", str(data), "000.00.12.H41", "000.00.13.H41", "--from", day)
    assert "merges into 000.00.13.H41" in out
    assert "000.12.03.H41" in out
    assert "→ 000.00.13.H41" in run("organs", "--data", str(data))
    assert "error: field_invalid:" in run(
        "merge", "--data", str(data), "000.00.13.H41", "000.00.12.H41", ok=False
    )
    assert token  # unused: the province never enrolled, which `organs` shows


def test_commands_need_an_initialised_folder(tmp_path: Path) -> None:
    out = run("organs", "--data", str(tmp_path / "missing"), ok=False)
    assert out.startswith("error: local:")
    assert "init" in out
