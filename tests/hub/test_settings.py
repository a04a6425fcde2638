"""The hub's HTTPS settings: ``tls_cert`` and ``tls_key``, checked when ``serve`` starts."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from hub.settings import load_settings
from protocol.errors import LocalError
from tests.email.servers import self_signed

HUB_EXE = str(Path(sys.executable).parent / "lienthong-hub")


def test_plain_http_without_a_certificate(tmp_path: Path) -> None:
    settings = load_settings(tmp_path)
    assert settings.scheme == "http"
    assert settings.ssl_context() is None


def test_certificate_and_key_make_a_tls12_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    settings = load_settings(tmp_path, tls_cert=cert, tls_key=key)
    context = settings.ssl_context()
    assert settings.scheme == "https"
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_relative_paths_are_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    self_signed(tmp_path / "tls")
    monkeypatch.setenv("LIENTHONG_TLS_CERT", "tls/cert.pem")
    monkeypatch.setenv("LIENTHONG_TLS_KEY", "tls/key.pem")
    settings = load_settings(tmp_path)
    assert settings.tls_cert == tmp_path.resolve() / "tls" / "cert.pem"
    assert settings.tls_key == tmp_path.resolve() / "tls" / "key.pem"
    assert settings.ssl_context() is not None


@pytest.mark.parametrize("given", ["tls_cert", "tls_key"])
def test_certificate_and_key_come_together(tmp_path: Path, given: str) -> None:
    cert, key = self_signed(tmp_path / "tls")
    with pytest.raises(LocalError, match="both tls_cert and tls_key"):
        load_settings(tmp_path, **{given: cert if given == "tls_cert" else key})


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key"])
def test_a_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    cert, key = self_signed(tmp_path / "tls")
    files = {"tls_cert": cert, "tls_key": key, missing: tmp_path / "nowhere.pem"}
    settings = load_settings(tmp_path, **files)
    with pytest.raises(LocalError, match=f"{missing}: .*nowhere.pem is not a file"):
        settings.ssl_context()


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "one")
    _, other_key = self_signed(tmp_path / "two")
    settings = load_settings(tmp_path, tls_cert=cert, tls_key=other_key)
    with pytest.raises(LocalError, match="do not load"):
        settings.ssl_context()


def test_serve_stops_at_start_without_its_key(tmp_path: Path) -> None:
    """The real command: a clear error and exit 1 before migrations or listening."""
    cert, _ = self_signed(tmp_path / "tls")
    env = {
        "PATH": "/usr/bin:/bin",
        "LIENTHONG_TLS_CERT": str(cert),
        "LIENTHONG_TLS_KEY": str(tmp_path / "tls" / "missing.key"),
    }
    proc = subprocess.run(
        [HUB_EXE, "serve", "--data", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error: local: tls_key:" in proc.stderr
    assert "missing.key is not a file" in proc.stderr
    assert "listening" not in proc.stderr
