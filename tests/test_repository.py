"""Repository-wide rules: error codes documented, import rules hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.errors import CODES, LocalError, RemoteError

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_code_is_documented() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    for code in CODES.values():
        assert f"| `{code.code}` | {code.status} |" in doc, (
            f"{code.code} missing from docs/errors.md"
        )


def test_docs_errors_is_generated_from_both_registries() -> None:
    """docs/errors.md is what scripts/gen_errors_doc.py writes: the protocol's codes
    and the node's own (``nodes.errors.NODE_CODES``), none added by hand or left out."""
    script = ROOT / "scripts" / "gen_errors_doc.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], cwd=ROOT, capture_output=True, check=False
    )
    assert result.returncode == 0, "run python scripts/gen_errors_doc.py"


def test_unregistered_code_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        RemoteError("no_such_code")


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "protocol",
            {"hub", "nodes", "aiohttp", "sqlalchemy", "asyncio", "asyncpg", "aiosqlite", "socket"},
        ),
        ("hub", {"nodes"}),
        ("nodes", {"hub"}),
    ],
)
def test_import_rules(package: str, forbidden: set[str]) -> None:
    """Belt and braces beside lint-imports: a direct scan of every import statement."""
    assert not (_imports(package) & forbidden)


def test_lint_imports_contracts_hold() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
