"""Real ``lienthong-hub`` processes for end-to-end tests: init, enroll, serve on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout
from click.testing import CliRunner

from hub.cli import main
from hub.hubkeys import load_keys
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey

from .helpers import Office, Remote, enrol, login

EXE = str(Path(sys.executable).parent / "lienthong-hub")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def cli(*args: str) -> str:
    """Run a lienthong-hub command; returns its standard output (fails loudly)."""
    proc = await asyncio.create_subprocess_exec(
        EXE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (args, out.decode(), err.decode())
    return out.decode()


async def init(data: Path, database_url: str | None = None) -> None:
    args = ["init", "--data", str(data)]
    if database_url:
        args += ["--database-url", database_url]
    await cli(*args)


async def enroll(data: Path, code: str, name: str, *extra: str) -> str:
    """``lienthong-hub enroll`` -- the same command, run in a thread of this process: a new
    interpreter per office would cost seconds of imports for nothing the test checks."""
    args = ["enroll", "--data", str(data), code, "--name", name, *extra]

    def invoke() -> str:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    out = await asyncio.get_running_loop().run_in_executor(None, invoke)
    return out.strip().splitlines()[-1]


class HubProcess:
    """``lienthong-hub serve`` in a subprocess; its JSON log lines are kept in ``lines``."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.lines: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, within: float = 60) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            EXE, "serve", "--data", str(self.data), "--port", "0",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
        listening = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(listening))
        self.port = await asyncio.wait_for(listening, within)

    async def _read(self, listening: asyncio.Future[int]) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "text", "text": raw.decode(errors="replace")}
            self.lines.append(line)
            if line.get("event") == "listening" and not listening.done():
                listening.set_result(int(line["port"]))
        if not listening.done():
            listening.set_exception(RuntimeError(f"hub exited: {self.lines[-5:]}"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()


def remote(url: str, data: Path) -> Remote:
    """A client for the hub at ``url`` whose data folder (keys) is ``data``."""
    return Remote(
        client=ClientSession(base_url=url, timeout=ClientTimeout(total=120)),
        keys=load_keys(data),
    )


async def office_via_cli(api: Remote, data: Path, code: str, name: str, *extra: str) -> Office:
    """``lienthong-hub enroll``, then enrolment and login over HTTP, like a node."""
    token = await enroll(data, code, name, *extra)
    office = Office(code, name, SigningPrivateKey.generate(), EncryptionPrivateKey.generate())
    await enrol(api, office, token)
    return await login(api, office)
