"""Key transparency: what changed between two directory entries of one organ.

Every directory change (enrol, rotate, revoke, merge, update) is a ``directory`` event of
the audit log holding the entry the authority signed (DESIGN.md §2).  Whoever follows the
log -- an auditor's ``monitor``, an office watching its own entry -- turns each new entry
into a list of :class:`Change` s with :func:`diff_entries`.  An office also asks
:func:`foreign_keys`: keys listed under its organ that it never generated are exactly the
"key swapped behind our back" it must raise an alarm about.

Pure functions over parsed, already verified entries.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from .directory import DirectoryEntry, KeyRecord
from .keys import fingerprint

__all__ = ["CHANGE_KINDS", "Change", "diff_entries", "foreign_keys"]

#: Kinds of change, in the order a report lists them.
CHANGE_KINDS: Final = (
    "enrolled",
    "key_added",
    "key_revoked",
    "key_retired",
    "merged",
    "updated",
)


@dataclass(frozen=True, slots=True)
class Change:
    """One change of an organ's entry: its kind, the key (if any) and a readable line."""

    organ: str
    kind: str
    serial: int
    detail: str
    usage: str | None = None
    kid: bytes | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "organ": self.organ,
            "kind": self.kind,
            "serial": self.serial,
            "usage": self.usage,
            "key": fingerprint(self.kid) if self.kid is not None else None,
            "detail": self.detail,
        }


def _keys(entry: DirectoryEntry) -> dict[tuple[str, bytes], KeyRecord]:
    out: dict[tuple[str, bytes], KeyRecord] = {}
    for usage, records in (("sign", entry.signing_keys), ("enc", entry.encryption_keys)):
        for rec in records:
            out[usage, rec.kid] = rec
    return out


def diff_entries(old: DirectoryEntry | None, new: DirectoryEntry) -> list[Change]:
    """The changes from ``old`` (None: the organ's first entry) to ``new``."""
    changes: list[Change] = []
    organ, serial = new.organ, new.serial

    def add(kind: str, detail: str, usage: str | None = None, kid: bytes | None = None) -> None:
        changes.append(Change(organ, kind, serial, detail, usage, kid))

    before = _keys(old) if old is not None else {}
    after = _keys(new)
    if old is None:
        add("enrolled", f"{organ} ({new.name}) enters the directory as {new.role}")
    for (usage, kid), rec in after.items():
        previous = before.get((usage, kid))
        if previous is None:
            add("key_added", f"new {usage} key {fingerprint(kid)} ({rec.alg})", usage, kid)
            continue
        if rec.revoked_at is not None and previous.revoked_at is None:
            add("key_revoked", f"{usage} key {fingerprint(kid)} revoked", usage, kid)
        elif rec.not_after < previous.not_after and rec.revoked_at is None:
            add("key_retired", f"{usage} key {fingerprint(kid)} superseded", usage, kid)
    if old is not None:
        if new.successor is not None and new.successor != old.successor:
            add("merged", f"{organ} merges into {new.successor}")
        fields = ("name", "role", "level", "parent", "email", "transports", "valid_until")
        moved = [f for f in fields if getattr(old, f) != getattr(new, f)]
        if new.successor is not None and new.successor != old.successor:
            moved = [f for f in moved if f != "valid_until"]
        if moved:
            add("updated", f"{', '.join(moved)} changed")
    return changes


def foreign_keys(entry: DirectoryEntry, own: Collection[bytes]) -> list[tuple[str, KeyRecord]]:
    """Keys of ``entry`` (usage, record) whose key id is not among ``own``."""
    return [(usage, rec) for (usage, kid), rec in _keys(entry).items() if kid not in own]
