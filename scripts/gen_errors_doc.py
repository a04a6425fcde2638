"""Write docs/errors.md from protocol.errors.CODES and nodes.errors.NODE_CODES (a test
keeps them in step)."""

from __future__ import annotations

import sys
from pathlib import Path

from nodes.errors import NODE_CODES
from protocol.errors import CODES

HEADER = """# Error codes

Every error a peer can cause carries one of these stable codes and an HTTP status hint. The
hub answers with a JSON problem body `{"code": ..., "status": ..., "detail": ...}`; the node's
command line prints the same code and a one-line explanation. Generated from
`protocol/errors.py` and `nodes/errors.py` by `python scripts/gen_errors_doc.py`.

| code | HTTP | meaning |
| --- | --- | --- |
"""


NODE_HEADER = """
## The node's own codes

Conditions of the office's side that it can act on (`lienthong-node`, `lienthong-audit`):
the command line prints `error: <code>: <detail>` and exits non-zero.  Codes of the table
above that come from the hub reach the clerk as the hub said them.

| code | meaning |
| --- | --- |
"""


def render() -> str:
    rows = [f"| `{c.code}` | {c.status} | {c.meaning} |" for c in CODES.values()]
    node_rows = [f"| `{code}` | {meaning} |" for code, meaning in sorted(NODE_CODES.items())]
    return HEADER + "\n".join(rows) + "\n" + NODE_HEADER + "\n".join(node_rows) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text(encoding="utf-8") == render() else 1)
    target.write_text(render(), encoding="utf-8")
