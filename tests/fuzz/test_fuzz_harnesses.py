"""Run every atheris harness in this folder briefly: each must finish its runs cleanly.

Harnesses are found by glob, so one added later is run too.  Each runs as its own
process, the way ``make fuzz`` runs it, over its seed corpus (``corpus/<harness>/``) when
there is one.  libFuzzer writes the inputs it finds to the *first* corpus folder, so a
scratch folder goes first and the committed seeds stay untouched; crash artifacts go to
the test's temporary folder and are named in the failure message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
HARNESSES = sorted(HERE.glob("fuzz_*.py"))
RUNS = 3000
TIMEOUT = 300

pytest.importorskip("atheris")


def test_harnesses_are_found() -> None:
    names = {h.stem for h in HARNESSES}
    assert {"fuzz_cbor", "fuzz_envelope", "fuzz_directory_entry", "fuzz_body"} <= names
    assert "fuzz_metadata" in names


@pytest.mark.fuzz
@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("harness", HARNESSES, ids=[h.stem for h in HARNESSES])
def test_harness_runs_clean(harness: Path, tmp_path: Path) -> None:
    work = tmp_path / "corpus"
    work.mkdir()
    command = [
        sys.executable,
        str(harness),
        f"-atheris_runs={RUNS}",
        f"-artifact_prefix={tmp_path}/",
        str(work),
    ]
    seeds = HERE / "corpus" / harness.stem
    if seeds.is_dir():
        command.append(str(seeds))
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    artifacts = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert result.returncode == 0, (
        f"{harness.name} exited with {result.returncode}; artifacts: {artifacts}\n"
        + result.stderr[-4000:]
    )
    assert f"Done {RUNS}" in result.stderr, result.stderr[-2000:]
