"""Watch folders: how an office's existing document system hands documents to the node.

To send, a system (or a clerk) creates ``<home>/outbox/<name>/`` holding the files and a
``send.json`` (see :mod:`nodes.requests`), and creates the empty marker ``.ready`` *last*:
the marker says the copy is complete, so a half-copied file is never sealed.  The agent
seals the folder like ``lienthong-node send`` would, then moves it to
``outbox/sent/<name>/`` with a ``result.json`` naming the packet id -- or, if the request
is refused (bad send.json, unknown recipient ...), to ``outbox/failed/<name>/`` with an
``error.json``.  A folder whose recipients cannot be resolved because the hub is away
stays where it is and is tried again.

Received documents appear as ``inbox/<packet-id>/`` with their files and a
``metadata.json`` (see :mod:`nodes.transfer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import NodeError
from .home import Home
from .requests import READY, SEND_JSON, SendRequest, from_send_json

#: Folders of ``outbox/`` that are not watch folders.
RESERVED = frozenset({"sent", "failed"})


def ready_folders(home: Home) -> list[Path]:
    """Watch folders with both ``send.json`` and ``.ready``, oldest marker first."""
    try:
        entries = list(home.outbox.iterdir())
    except FileNotFoundError:
        return []
    ready = []
    for folder in entries:
        if folder.name in RESERVED or folder.name.startswith(".") or not folder.is_dir():
            continue
        marker = folder / READY
        if marker.is_file() and (folder / SEND_JSON).is_file():
            ready.append((marker.stat().st_mtime, folder.name, folder))
    return [folder for _, _, folder in sorted(ready, key=lambda r: (r[0], r[1]))]


def read_request(folder: Path) -> SendRequest:
    try:
        doc = json.loads((folder / SEND_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeError("request_invalid", f"{SEND_JSON}: {exc}") from None
    return from_send_json(folder, doc)


def finish(home: Home, folder: Path, *, failed: bool, doc: dict[str, Any]) -> Path:
    """Move a handled folder to ``outbox/sent`` or ``outbox/failed``, with its result."""
    base = home.outbox_failed if failed else home.outbox_sent
    base.mkdir(parents=True, exist_ok=True)
    dest = base / folder.name
    n = 1
    while dest.exists():
        n += 1
        dest = base / f"{folder.name} ({n})"
    (folder / READY).unlink(missing_ok=True)
    name = "error.json" if failed else "result.json"
    (folder / name).write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", "utf-8")
    os.replace(folder, dest)
    return dest
