"""The OpenAPI file checked against a live ``lienthong-hub serve`` with schemathesis (slow).

Every operation gets generated requests (valid and invalid) with an office's bearer
token; every answer must be no server error, a status the file declares, the content type
it declares, and a body matching its schema.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .helpers import PROVINCE, YEN_LAC, seal, send
from .processes import init, office_via_cli, remote

pytestmark = pytest.mark.slow
# Envelopes and batches are CBOR bytes: generate them as raw binary bodies.
schemathesis.serializer.alias("application/cbor", "application/octet-stream")

EXE = str(Path(sys.executable).parent / "lienthong-hub")
EXAMPLES = int(os.environ.get("LIENTHONG_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _Served:
    def __init__(self, data: Path) -> None:
        self.log = data / "serve.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [EXE, "serve", "--data", str(data), "--port", "0"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        self.port = self._wait_listening()

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for raw in self.log.read_text(errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if line.get("event") == "listening":
                    return int(line["port"])
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("the hub did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)

    def errors(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("level") == "error":
                out.append(line)
        return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    data = tmp_path / "hub"

    async def prepare() -> None:
        await init(data)

    asyncio.run(prepare())
    hub = _Served(data)
    url = f"http://127.0.0.1:{hub.port}"

    async def offices() -> dict[str, str]:
        api = remote(url, data)
        try:
            province = await office_via_cli(api, data, PROVINCE, "Văn phòng Tỉnh ủy")
            commune = await office_via_cli(
                api, data, YEN_LAC, "Đảng ủy xã Yên Lạc", "--parent", PROVINCE
            )
            await send(api, province, [commune])
            seal(province, [commune])
        finally:
            await api.client.close()
        return province.headers

    try:
        headers = asyncio.run(offices())
        yield url, headers
    finally:
        hub.stop()
    assert hub.errors() == [], "the hub logged errors"


def test_openapi_conformance(served: tuple[str, dict[str, str]]) -> None:
    url, headers = served
    spec = requests.get(f"{url}/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == len([m for p in spec["paths"].values() for m in p])
    calls: dict[str, int] = {}
    for operation in operations:
        try:
            _exercise(operation, url, headers, calls)
        except Exception as exc:  # recorded; go on with the next operation
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:800]}")
    missing = [op.label for op in operations if not calls.get(op.label)]
    assert not missing, (missing, failures)
    assert not failures, "\n\n".join(failures)


def _exercise(operation: Any, url: str, headers: dict[str, str], calls: dict[str, int]) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        calls[operation.label] = calls.get(operation.label, 0) + 1
        if operation.path == "/v1/mailbox" and case.query and "wait" in case.query:
            case.query["wait"] = 0  # a long-poll would hold each example up to 60 s
        response = case.call(base_url=url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)

    run()
