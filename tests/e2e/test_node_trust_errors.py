"""Trust errors, with real processes: a revoked own key, a hub with other keys than the
pinned ones, a hub certificate the office does not trust.  Each is a clear error code, a
non-zero exit, and nothing written: no half-made home, no spent enrolment token, nothing
in the inbox.

The extra hubs here (an impostor, an HTTPS hub) run on the embedded SQLite default: what
they test is in front of the database.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import OfficeFactory
from .harness import Hub, Node, Result, make_tls, unique

WRONG_FINGERPRINT = "0123:4567:89ab:cdef:0123:4567:89ab:cdef"


def set_config(node: Node, **values: Any) -> None:
    """Edit the office's config.json as an administrator would."""
    path = node.home / "config.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.update(values)
    path.write_text(json.dumps(doc), encoding="utf-8")


def error_of(result: Result) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    return str(result.doc["error"]["code"])


def init_args(hub: Hub, node: Node, token: str, *extra: str) -> tuple[str, ...]:
    return ("init", "--hub", hub.url, "--code", node.code, "--token", token, "--json", *extra)


def test_revoked_own_key_is_a_clear_error(hub: Hub, office: OfficeFactory) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    province.json("sync")
    hub.cli("revoke", "--data", str(hub.data), province.code)
    refused = province.run("sync", "--json", ok=False)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "key_revoked"


# --- the hub's keys -------------------------------------------------------------------------


def test_init_with_another_authority_spends_nothing(hub: Hub, tmp_path: Path) -> None:
    """``init --authority`` is checked before the one-time token is spent and before
    anything is written: the retry with the right fingerprint just works."""
    code = unique("TU")
    token = hub.token_for(code, "Văn phòng Tỉnh ủy", level="province")
    node = Node(tmp_path, code, code)
    enrolments = len(hub.statuses("/v1/enrol"))

    refused = node.run(*init_args(hub, node, token, "--authority", WRONG_FINGERPRINT), ok=False)
    assert error_of(refused) == "hub_key_mismatch"
    assert WRONG_FINGERPRINT in refused.doc["error"]["detail"]
    assert not node.home.exists()  # no keystore, no config: nothing to be in the way
    assert len(hub.statuses("/v1/enrol")) == enrolments  # the token was not even offered

    right = hub.fingerprints["directory authority"]
    done = node.init(hub, token, "--authority", right)
    assert done["authority"] == right
    node.json("sync")


@pytest.fixture
def impostor(tmp_path: Path) -> Iterator[Hub]:
    """A second deployment (initialised, not started): what answers at the office's URL."""
    other = Hub(tmp_path / "impostor").init()
    try:
        yield other
    finally:
        other.stop()


def refused_by_identity(province: Node, other: Hub) -> Result:
    set_config(province, hub_url=other.url)
    logins = len(other.statuses("/v1/sessions"))  # the harness's admin may have logged in
    refused = province.run("sync", "--json", ok=False)
    assert error_of(refused) == "hub_key_mismatch"
    assert not any((province.home / "inbox").iterdir())
    # The pinned keys are compared before anything else: no login, no mailbox.
    assert other.statuses("/v1/directory/authority") == [200]
    assert len(other.statuses("/v1/sessions")) == logins
    assert other.statuses("/v1/mailbox") == []
    return refused


def test_another_hub_at_the_address_is_refused(
    hub: Hub, office: OfficeFactory, impostor: Hub
) -> None:
    """Another deployment with the organ's name and code (not its keys) is named as what
    it is -- ``hub_key_mismatch`` -- not an ``organ_unknown`` of a hub the office trusts."""
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    province.json("sync")
    impostor.start()
    impostor.token_for(province.code, "Văn phòng Tỉnh ủy", level="province")
    refused = refused_by_identity(province, impostor)
    assert "directory authority" in refused.doc["error"]["detail"]
    assert hub.fingerprints["directory authority"] in refused.doc["error"]["detail"]


def test_a_new_hub_key_alone_is_refused(hub: Hub, office: OfficeFactory, impostor: Hub) -> None:
    """The directory authority key kept, the hub key (which signs receipts) replaced."""
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    province.json("sync")
    keys = "keys/directory-authority.key"
    shutil.copyfile(hub.data / keys, impostor.data / keys)
    impostor.start()
    refused = refused_by_identity(province, impostor)
    detail = refused.doc["error"]["detail"]
    assert "hub's key" in detail
    assert hub.fingerprints["hub key"] in detail


# --- the hub's TLS certificate --------------------------------------------------------------


def test_hub_certificate_must_verify(tmp_path: Path) -> None:
    """An HTTPS hub: an office trusting its CA (``ca_file``) exchanges over it; one that
    trusts another CA, or only the system's, gets ``hub_certificate_invalid`` and nothing."""
    tls = make_tls(tmp_path / "tls")
    other_ca = make_tls(tmp_path / "other-ca", server=False).ca
    https = Hub(tmp_path / "https").init()
    try:
        https.start(tls_cert=str(tls.cert), tls_key=str(tls.key))
        assert https.url.startswith("https://")
        https.ca_file = tls.ca

        province_code, ward_code = unique("TU"), unique("TU.PX")
        token = https.token_for(province_code, "Văn phòng Tỉnh ủy", level="province")
        province = Node(tmp_path, province_code, province_code)
        # init: without the CA, a clear error, no home, the token still good.
        refused = province.run(*init_args(https, province, token), ok=False)
        assert error_of(refused) == "hub_certificate_invalid"
        assert not province.home.exists()
        province.init(https, token, "--ca-file", str(tls.ca))

        ward_token = https.token_for(ward_code, "Đảng ủy phường", parent=province_code)
        ward = Node(tmp_path, ward_code, ward_code)
        ward.init(https, ward_token, "--ca-file", str(tls.ca))
        note = tmp_path / "bao-cao.txt"
        note.write_text("Báo cáo tháng", encoding="utf-8")
        packet = ward.send("--to", province_code, "--type", "BC", "--subject", "Báo cáo", str(note))

        for ca_file in (str(other_ca), ""):  # another CA; none: the system's trust
            set_config(province, ca_file=ca_file)
            refused = province.run("sync", "--json", ok=False)
            assert error_of(refused) == "hub_certificate_invalid", ca_file
            assert "certificate" in refused.doc["error"]["detail"].lower()
            assert not any((province.home / "inbox").iterdir())

        set_config(province, ca_file=str(tls.ca))
        assert packet in province.json("sync")["received"]
    finally:
        https.stop()
