"""A revoked own key, or another hub at the configured address: clear errors, non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import OfficeFactory
from .harness import Hub


def test_revoked_own_key_is_a_clear_error(hub: Hub, office: OfficeFactory) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    province.json("sync")
    hub.cli("revoke", "--data", str(hub.data), province.code)
    refused = province.run("sync", "--json", ok=False)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "key_revoked"


def test_another_hub_at_the_address_is_refused(office: OfficeFactory, tmp_path: Path) -> None:
    province = office("TU", "Văn phòng Tỉnh ủy", level="province")
    province.json("sync")
    impostor = Hub(tmp_path / "impostor").init().start()
    try:
        # Another deployment answers at the configured URL; it has the organ's name and code
        # but not the keys this office enrolled.
        impostor.token_for(province.code, "Văn phòng Tỉnh ủy", level="province")
        config = province.home / "config.json"
        doc = json.loads(config.read_text(encoding="utf-8"))
        doc["hub_url"] = impostor.url
        config.write_text(json.dumps(doc), encoding="utf-8")
        refused = province.run("sync", "--json", ok=False)
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["error"]["code"] == "organ_unknown"
        assert not any((province.home / "inbox").iterdir())
    finally:
        impostor.stop()
