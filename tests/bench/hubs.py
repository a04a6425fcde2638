"""Real hubs for the benchmarks: ``lienthong-hub`` processes on PostgreSQL, offices in bulk.

:class:`HubCluster` runs ``lienthong-hub init`` and then N ``lienthong-hub serve``
processes on one data folder (keys, blobs) and one PostgreSQL database, each on its own
loopback port (clients spread themselves over the ports: there is no load balancer to
measure).  :func:`enrol_offices` enrols offices in bulk through the hub's own code path:
the admin organ with ``lienthong-hub enroll``, every other organ through the admin API
(``POST /v1/admin/enrolments``, the same service function as the CLI) and each office's
keys through ``POST /v1/enrol`` with proof of possession, by :class:`nodes.client.HubClient`.
The offices' private keys go to a JSON file the client processes read (benchmark only).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.client import HubClient
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey

from .common import HUB_EXE, ROOT, clean_env, peak_rss_mib, rss_mib, stop

ADMIN = "QTHT.BENCH"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class HubCluster:
    root: Path
    database_url: str
    processes: int = 2
    hybrid: bool = False
    #: Run each process under :mod:`tests.bench.hubtrace` (round trips per route).
    trace: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    #: Extra environment of the serve processes (e.g. MALLOC_ARENA_MAX).
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "hub"

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def cli(self, *args: str) -> str:
        proc = subprocess.run(
            [HUB_EXE, *args], capture_output=True, text=True, env=clean_env(), timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"lienthong-hub {args[0]}: {proc.stderr.strip()}")
        return proc.stdout

    def init(self) -> HubCluster:
        args = ["init", "--data", str(self.data), "--database-url", self.database_url]
        self.cli(*args, *(["--hybrid"] if self.hybrid else []), "--hub-name", "bench")
        self.cli("migrate", "--data", str(self.data))
        return self

    def start(self, timeout: float = 60) -> HubCluster:
        env = clean_env(
            LIENTHONG_MIGRATE_ON_START="false",
            **{f"LIENTHONG_{k.upper()}": v for k, v in self.settings.items()},
            **self.env,
        )
        for n in range(self.processes):
            log = (self.root / f"hub-{n}.log").open("wb")
            exe = [HUB_EXE]
            if self.trace:
                exe = [sys.executable, "-m", "tests.bench.hubtrace", str(self.trace_file(n))]
            proc = subprocess.Popen(
                [*exe, "serve", "--data", str(self.data), "--port", "0"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
            log.close()
            self.procs.append(proc)
        for n, proc in enumerate(self.procs):
            self.ports.append(self._port(n, proc, timeout))
        return self

    def _port(self, n: int, proc: subprocess.Popen[bytes], timeout: float) -> int:
        path = self.root / f"hub-{n}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"hub {n} exited: {path.read_text()[-2000:]}")
            for raw in path.read_text(errors="replace").splitlines():
                if '"listening"' in raw:
                    return int(json.loads(raw)["port"])
            time.sleep(0.1)
        raise TimeoutError(f"hub {n} did not start")

    def trace_file(self, n: int) -> Path:
        return self.root / f"hub-{n}-trace.json"

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs.clear()
        self.ports.clear()

    def traces(self) -> dict[str, dict[str, int]]:
        """Round trips and requests per route (and statement), summed over the processes
        (after stop)."""
        out: dict[str, dict[str, int]] = {
            "round_trips": {},
            "transaction_control": {},
            "requests": {},
            "statements": {},
        }
        for n in range(self.processes):
            path = self.trace_file(n)
            if path.exists():
                doc = json.loads(path.read_text())
                for kind in out:
                    for route, count in doc.get(kind, {}).items():
                        out[kind][route] = out[kind].get(route, 0) + count
        return out

    def peak_rss_mib(self) -> list[float]:
        return [peak_rss_mib(pid) for pid in self.pids]

    def rss_mib(self) -> list[float]:
        return [rss_mib(pid) for pid in self.pids]

    def errors(self) -> list[str]:
        """Log lines at error level (a benchmark run must have none)."""
        out = []
        for n in range(self.processes):
            path = self.root / f"hub-{n}.log"
            if path.exists():
                out += [
                    line
                    for line in path.read_text(errors="replace").splitlines()
                    if '"level": "error"' in line or '"status": 500' in line
                ]
        return out


@dataclass(frozen=True)
class OfficeKeys:
    code: str
    signing: SigningPrivateKey
    encryption: EncryptionPrivateKey

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "sig_alg": self.signing.alg,
            "sig": b64(self.signing.private_bytes()),
            "enc_alg": self.encryption.alg,
            "enc": b64(self.encryption.private_bytes()),
        }

    @classmethod
    def from_json(cls, doc: dict[str, str]) -> OfficeKeys:
        return cls(
            doc["code"],
            SigningPrivateKey.from_private_bytes(doc["sig_alg"], base64.b64decode(doc["sig"])),
            EncryptionPrivateKey.from_private_bytes(doc["enc_alg"], base64.b64decode(doc["enc"])),
        )


def new_office(code: str, hybrid: bool) -> OfficeKeys:
    return OfficeKeys(
        code,
        SigningPrivateKey.generate(hybrid=hybrid),
        EncryptionPrivateKey.generate(hybrid=hybrid),
    )


async def enrol_offices(
    cluster: HubCluster,
    parents: list[tuple[str, str]],
    children: list[tuple[str, str]],
    *,
    concurrency: int = 24,
) -> tuple[dict[str, OfficeKeys], dict[str, Any]]:
    """Enrol ``parents`` then ``children`` ((code, parent or "") pairs) as offices.

    Returns every office's keys and the directory's (authority, hub key) as base64, plus
    the time it took.
    """
    started = time.perf_counter()
    token = cluster.cli("enroll", "--data", str(cluster.data), ADMIN, "--name", "Quản trị",
                        "--role", "admin").strip().splitlines()[-1]  # fmt: skip
    urls = cluster.urls
    admin_keys = new_office(ADMIN, cluster.hybrid)
    offices: dict[str, OfficeKeys] = {}
    identity: dict[str, Any] = {}
    async with HubClient(urls[0], organ=ADMIN, signing_key=admin_keys.signing) as admin:
        enrolled = await admin.enrol(token, admin_keys.signing, admin_keys.encryption.public_key())
        identity = {
            "authority": {"alg": enrolled.authority.alg, "pub": b64(enrolled.authority.raw)},
            "hub_key": {"alg": enrolled.hub_key.alg, "pub": b64(enrolled.hub_key.raw)},
        }
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, code: str, parent: str) -> None:
            async with gate:
                keys = new_office(code, cluster.hybrid)
                doc: dict[str, Any] = {"organ": code, "name": f"Văn phòng {code}", "level": "other"}
                if parent:
                    doc["parent"] = parent
                answer = await admin._call("POST", "/v1/admin/enrolments", json_body=doc)
                async with HubClient(urls[i % len(urls)], organ=code) as office:
                    await office.enrol(answer["token"], keys.signing, keys.encryption.public_key())
                offices[code] = keys

        for group in (parents, children):
            await asyncio.gather(*(one(i, c, p) for i, (c, p) in enumerate(group)))
    identity["enrol_seconds"] = round(time.perf_counter() - started, 2)
    identity["offices"] = len(offices)
    return offices, identity


def write_offices(path: Path, offices: dict[str, OfficeKeys], identity: dict[str, Any]) -> None:
    path.write_text(
        json.dumps({"identity": identity, "offices": [o.to_json() for o in offices.values()]})
    )
    path.chmod(0o600)
