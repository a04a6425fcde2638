"""Scenario 2: one large document from the sender's file to the verified file in the inbox.

Lienthong runs as an office would run it: ``lienthong-hub serve`` processes on
PostgreSQL, the recipient's ``lienthong-node run`` daemon long-polling, and the sender's
``lienthong-node send`` command (archive copy, sealing to the spool, upload).  The clock
runs from the start of ``send`` until ``inbox/<packet>/metadata.json`` exists, which the
node writes only once the signature, the body digest, the CEK commitment and every chunk
tag verified.  A 1 KiB document sent the same way first gives the fixed cost (process
start, keystore unlock, round trips, the long-poll's wake-up), so the per-byte rate can
be told apart: ``net_mb_s = size / (t_large - t_small)``.

Memory: ``VmHWM`` of each hub process and of both node processes; the node's peaks are
also taken from the moment the transfer starts (``clear_refs``), since opening the
keystore costs a fixed 64 MiB by design (Argon2id, RFC 9106) before any byte moves.

The peer: ``age`` encrypt + decrypt plus two copies (sender -> server -> recipient), the
copy on the server and the decrypted file fsynced as the hub's blob and the inbox are.

Stages (``lienthong.stages``): on a shared machine the wall rate says little, so the same
document also goes through the node's own functions, in this process, against the same
hub processes, one stage at a time -- archive copy, sealing to the spool, upload,
download-and-open into the inbox -- each with its wall time and the CPU seconds of this
process and of the hub processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from nodes import transfer
from nodes.client import HubClient
from nodes.mailbox import download_into
from protocol.packet import DocumentMetadata, Opener, Recipient, Sealer, parse_envelope

from .common import (
    BIN,
    MIB,
    Sampler,
    clean_env,
    cpu_seconds,
    database,
    fill_file,
    loadavg,
    peak_rss_mib,
    status_kib,
    stop,
)
from .hubs import ADMIN, HubCluster, new_office
from .profiling import Profiler, py_spy, summarise

NODE_EXE = str(BIN / "lienthong-node")
PASSPHRASE = "mật khẩu đo hiệu năng 2025"
PROVINCE = "BENCH.TU"
COMMUNE = "BENCH.XA"
#: The organs of the stage timings (enrolled by this process, keys in memory).
STAGE_FROM = "BENCH.TU2"
STAGE_TO = "BENCH.XA2"


def _node_env(home: Path) -> dict[str, str]:
    return clean_env(LIENTHONG_HOME=str(home), LIENTHONG_PASSPHRASE=PASSPHRASE, LANG="C.UTF-8")


async def _tokens(cluster: HubCluster) -> dict[str, str]:
    """The admin organ (CLI), then the organs through the admin API: their tokens."""
    token = cluster.cli("enroll", "--data", str(cluster.data), ADMIN, "--name", "Quản trị",
                        "--role", "admin").strip().splitlines()[-1]  # fmt: skip
    keys = new_office(ADMIN, cluster.hybrid)
    out = {}
    organs = ((PROVINCE, None), (COMMUNE, PROVINCE), (STAGE_FROM, None), (STAGE_TO, STAGE_FROM))
    async with HubClient(cluster.urls[0], organ=ADMIN, signing_key=keys.signing) as admin:
        await admin.enrol(token, keys.signing, keys.encryption.public_key())
        for code, parent in organs:
            doc: dict[str, Any] = {"organ": code, "name": f"Văn phòng {code}"}
            if parent:
                doc["parent"] = parent
            answer = await admin._call("POST", "/v1/admin/enrolments", json_body=doc)
            out[code] = answer["token"]
    return out


def _node(home: Path, *args: str) -> str:
    proc = subprocess.run(
        [NODE_EXE, *args], capture_output=True, text=True, env=_node_env(home), timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lienthong-node {args[0]}: {proc.stderr.strip()[-1000:]}")
    return proc.stdout


class _Peak(Sampler):
    """Sample a process's VmHWM, reset (``clear_refs``) once ``started()`` holds."""

    period = 0.02

    def __init__(self, pid: int, started: Any) -> None:
        super().__init__()
        self.pid = pid
        self.started = started
        self.peak_kib = 0
        self.absolute_kib = 0
        self.reset = False

    def sample(self) -> bool:
        hwm = status_kib(self.pid, "VmHWM")
        if hwm == 0:
            return False  # the process has ended
        self.absolute_kib = max(self.absolute_kib, hwm)
        try:
            if not self.reset and self.started():
                Path(f"/proc/{self.pid}/clear_refs").write_text("5")
                self.reset = True
            elif self.reset:
                self.peak_kib = max(self.peak_kib, hwm)
        except OSError:
            pass
        return True


def _send(sender: Path, recipient: Path, doc: Path, profile: Path | None = None) -> dict[str, Any]:
    """``lienthong-node send``; returns its timings and peaks, once the inbox has the file."""
    archive = sender / "archive"
    before = set(archive.iterdir()) if archive.exists() else set()
    spy: list[str] = []
    exe = py_spy()
    if profile is not None and exe is not None:
        spy = [exe, "record", "--format", "raw", "--gil", "--rate", "200", "--nonblocking",
               "--output", str(profile / "py-spy-send.txt"), "--"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*spy, NODE_EXE, "send", "--to", COMMUNE, "--type", "CV", "--json",
         "--subject", "Tài liệu hội nghị tổng kết", str(doc)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_node_env(sender),
    )  # fmt: skip
    # The keystore is open and the archive copy has begun: the transfer's own memory.
    with _Peak(proc.pid, lambda: archive.exists() and set(archive.iterdir()) - before) as peak:
        out, err = proc.communicate(timeout=1800)
    sent = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"send: {err.decode(errors='replace')[-1000:]}")
    text = out.decode(errors="replace")  # under py-spy, its own lines come first
    pid = json.loads(text[text.index("{") : text.rindex("}") + 1])["packet_id"]
    ready = recipient / "inbox" / pid / "metadata.json"
    while not ready.exists():
        if time.perf_counter() - started > 1800:
            raise TimeoutError("the document never reached the inbox")
        time.sleep(0.005)
    done = time.perf_counter()
    return {
        "packet_id": pid,
        "seconds": done - started,
        "send_command_seconds": round(sent - started, 3),
        "send_peak_rss_mib": round(peak.absolute_kib / 1024, 1),
        "send_transfer_peak_rss_mib": round(peak.peak_kib / 1024, 1) if peak.reset else None,
    }


class _Clock:
    """Wall time, this process's CPU and the hub processes' CPU of one stage."""

    def __init__(self, out: dict[str, Any], name: str, pids: list[int], size: int) -> None:
        self.out, self.name, self.pids, self.size = out, name, pids, size

    def __enter__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.hub = sum(cpu_seconds(p) for p in self.pids)

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.wall
        self.out[self.name] = {
            "seconds": round(wall, 3),
            "mb_s": round(self.size / 1e6 / wall, 1),
            "node_cpu_seconds": round(time.process_time() - self.cpu, 2),
            "hub_cpu_seconds": round(sum(cpu_seconds(p) for p in self.pids) - self.hub, 2),
        }


async def _stages(
    cluster: HubCluster, tokens: dict[str, str], folder: Path, doc: Path, want: str, size: int
) -> dict[str, Any]:
    """The node's transfer functions one after the other, timed (see the module text)."""
    keys = {code: new_office(code, cluster.hybrid) for code in tokens}
    url = cluster.urls[0]  # one hub process: its CPU is the hub's share of every stage
    out: dict[str, Any] = {}
    try:
        async with (
            HubClient(url, organ=STAGE_FROM, signing_key=keys[STAGE_FROM].signing) as sender,
            HubClient(url, organ=STAGE_TO, signing_key=keys[STAGE_TO].signing) as recipient,
        ):
            for client in (sender, recipient):
                k = keys[client.organ]
                await client.enrol(tokens[client.organ], k.signing, k.encryption.public_key())
            pids = cluster.pids[:1]
            with _Clock(out, "archive_copy", pids, size):
                files = await asyncio.to_thread(
                    transfer.copy_archive, transfer.source_files([doc]), folder / "archive"
                )
            sealer = Sealer(
                sender=STAGE_FROM,
                signing_key=keys[STAGE_FROM].signing,
                recipients=[Recipient(STAGE_TO, keys[STAGE_TO].encryption.public_key())],
                metadata=DocumentMetadata(subject="Tài liệu hội nghị tổng kết", doc_type="CV"),
                chunk_size=MIB,  # as the node seals large bodies
            )
            with _Clock(out, "seal_to_spool", pids, size):
                envelope, body_size = await asyncio.to_thread(
                    transfer.seal_to_file, sealer, files, folder / "body"
                )
            env = parse_envelope(envelope)
            await sender.submit_envelope(envelope)
            with _Clock(out, "upload", pids, size):
                await sender.upload_body(env.packet_id, folder / "body", body_size)
            opener = Opener(env, organ=STAGE_TO, key=keys[STAGE_TO].encryption)
            receiver = transfer.BodyReceiver(opener, folder / "part", folder / "open")
            final = folder / "inbox"
            with _Clock(out, "download_and_open", pids, size):
                await download_into(recipient, receiver)
                await asyncio.to_thread(receiver.finish, final, lambda files: {"files": files})
            if _sha256(final / doc.name) != want:
                raise RuntimeError("the stage timings' file differs")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def lienthong(
    work: Path, cfg: dict[str, Any], doc: Path, want: str, profile: bool = False
) -> dict[str, Any]:
    size = doc.stat().st_size
    with database("lt_bench_s2") as url:
        cluster = HubCluster(
            work / "s2-hub", url, processes=cfg["hub_procs"], env=cfg.get("hub_env", {})
        )
        cluster.root.mkdir(parents=True, exist_ok=True)
        cluster.init().start()
        daemon: subprocess.Popen[bytes] | None = None
        try:
            tokens = asyncio.run(_tokens(cluster))
            stage_tokens = {c: tokens.pop(c) for c in (STAGE_FROM, STAGE_TO)}
            homes = {code: work / f"s2-{code}" for code in tokens}
            for n, (code, token) in enumerate(tokens.items()):
                url_n = cluster.urls[n % len(cluster.urls)]
                _node(homes[code], "init", "--hub", url_n, "--code", code, "--token", token,
                      "--json")  # fmt: skip
            sender, recipient = homes[PROVINCE], homes[COMMUNE]
            _node(sender, "sync", "--json")  # directory cached, as a running office has it
            log = (work / "s2-daemon.log").open("wb")
            daemon = subprocess.Popen(
                [NODE_EXE, "run", "--json"], stdout=log, stderr=subprocess.STDOUT,
                env=_node_env(recipient),
            )  # fmt: skip
            log.close()
            time.sleep(3)  # keystore open, first long-poll waiting
            tiny = work / "s2-tiny.txt"
            tiny.write_bytes(os.urandom(1024))
            small = _send(sender, recipient, tiny)
            load = loadavg()
            daemon_before = status_kib(daemon.pid, "VmHWM")  # keystore open, idle
            Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")
            folder = work / "s2-profile"
            prof = Profiler([*cluster.pids, daemon.pid], folder) if profile else None
            if prof:
                prof.__enter__()
            try:
                large = _send(sender, recipient, doc, folder if profile else None)
            finally:
                if prof:
                    prof.__exit__(None, None, None)
            daemon_peak = status_kib(daemon.pid, "VmHWM")
            profiles = {}
            if prof:
                for name, pid in (("hub-0", cluster.pids[0]), ("hub-1", cluster.pids[-1]),
                                  ("daemon", daemon.pid)):  # fmt: skip
                    profiles[name] = summarise([folder / f"py-spy-{pid}.txt"], 12)
                profiles["send"] = summarise([folder / "py-spy-send.txt"], 12)
            got = next((recipient / "inbox" / large["packet_id"]).glob("*.bin"))
            if _sha256(got) != want:
                raise RuntimeError("the received file differs")
            hub_peaks = cluster.peak_rss_mib()  # before the stages add their own transfer
            (work / "s2-stages").mkdir(exist_ok=True)
            stages = asyncio.run(
                _stages(cluster, stage_tokens, work / "s2-stages", doc, want, size)
            )
            seconds = large["seconds"]
            fixed = small["seconds"]
            return {
                "size_mib": size // MIB,
                "seconds": round(seconds, 2),
                "mb_s": round(size / 1e6 / seconds, 1),
                "fixed_seconds_1kib": round(fixed, 2),
                "net_mb_s": round(size / 1e6 / max(seconds - fixed, 1e-9), 1),
                "send_command_seconds": large["send_command_seconds"],
                "hub_peak_rss_mib": hub_peaks,
                "send_peak_rss_mib": large["send_peak_rss_mib"],
                "send_transfer_peak_rss_mib": large["send_transfer_peak_rss_mib"],
                "daemon_peak_rss_mib": round(max(daemon_peak, daemon_before) / 1024, 1),
                "daemon_transfer_peak_rss_mib": round(daemon_peak / 1024, 1),
                "loadavg_before": load,
                "stages": stages,
                **({"profile": profiles} if profiles else {}),
            }
        finally:
            stop(daemon)
            cluster.stop()
            for code in ("s2-BENCH.TU", "s2-BENCH.XA"):
                shutil.rmtree(work / code, ignore_errors=True)


def age(work: Path, doc: Path, want: str) -> dict[str, Any]:
    if shutil.which("age") is None or shutil.which("age-keygen") is None:
        return {"skipped": "age is not installed"}
    folder = work / "s2-age"
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = next(
        line.split(":", 1)[1].strip()
        for line in key.read_text().splitlines()
        if line.startswith("# public key:")
    )
    sender_out, server, inbox, plain = (
        folder / "sent.age", folder / "server.age", folder / "inbox.age", folder / "out.bin"
    )  # fmt: skip
    load = loadavg()
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    subprocess.run(["age", "-r", recipient, "-o", str(sender_out), str(doc)], check=True)
    steps["encrypt"] = time.perf_counter() - t0
    t = time.perf_counter()
    subprocess.run(["cp", str(sender_out), str(server)], check=True)
    subprocess.run(["sync", str(server)], check=True)  # the server stores it durably
    steps["copy_to_server"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["cp", str(server), str(inbox)], check=True)
    steps["copy_to_recipient"] = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(["age", "-d", "-i", str(key), "-o", str(plain), str(inbox)], check=True)
    subprocess.run(["sync", str(plain)], check=True)
    steps["decrypt"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    ok = _sha256(plain) == want
    shutil.rmtree(folder, ignore_errors=True)
    size = doc.stat().st_size
    return {
        "seconds": round(seconds, 2),
        "mb_s": round(size / 1e6 / seconds, 1),
        "steps_seconds": {k: round(v, 2) for k, v in steps.items()},
        "verified": ok,
        "loadavg_before": load,
    }


def run(work: Path, cfg: dict[str, Any], profile: bool = False) -> dict[str, Any]:
    size = cfg["large_mib"] * MIB
    doc = work / "Hồ sơ hội nghị.bin"
    fill_file(doc, size)
    want = _sha256(doc)
    try:
        result: dict[str, Any] = {"config": {"size_mib": cfg["large_mib"]}}
        result["age"] = age(work, doc, want)
        result["lienthong"] = lienthong(work, cfg, doc, want, profile)
        lt, ag = result["lienthong"], result["age"]
        if "seconds" in ag:
            result["ratios"] = {"lienthong_time_over_age": round(lt["seconds"] / ag["seconds"], 2)}
        return result
    finally:
        doc.unlink(missing_ok=True)


__all__ = ["peak_rss_mib", "run"]
