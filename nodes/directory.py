"""The node's view of the directory: verified entries, cached for when the hub is away.

Every entry is verified against the directory authority key pinned at enrolment, both
when the hub serves it and each time it is read back from the local cache -- the cache is
a convenience, not a source of trust.  An entry never replaces a cached one of a higher
serial, so a hub cannot roll an office back to a key that has since been revoked.

Addressing follows the organ tree: ``--to-children`` and ``--to-descendants`` ask the hub
for the subtree (or, offline, walk the cached entries' parent links); an organ that was
merged into another routes to its successor; organs that are not offices (auditors,
admins) are never recipients.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol.directory import DirectoryEntry, SignedEntry, check_organ_code, verify_entry
from protocol.errors import RemoteError
from protocol.keys import SigningPublicKey

from .client import HubClient
from .errors import HubUnavailable, NodeError
from .store import Store

#: Depth of ``--to-descendants`` (the hub's tree bound).
DESCENDANTS_DEPTH = 64
#: Longest successor chain followed (merges of merges).
SUCCESSOR_HOPS = 16


@dataclass(frozen=True, slots=True)
class Resolved:
    """A recipient organ and its verified entry (after following successors)."""

    organ: str
    entry: DirectoryEntry
    addressed_as: str


class DirectoryView:
    def __init__(self, store: Store, authority: SigningPublicKey, client: HubClient | None):
        self.store = store
        self.authority = authority
        self.client = client

    def _remember(self, signed: SignedEntry) -> None:
        e = signed.entry
        self.store.put_entry(
            e.organ, e.serial, signed.raw, parent=e.parent, name=e.name, role=e.role
        )

    def cached(self, organ: str) -> DirectoryEntry | None:
        found = self.store.get_entry(organ)
        if found is None:
            return None
        return verify_entry(found.entry, self.authority, organ=organ).entry

    def name(self, organ: str) -> str:
        return self.store.organ_name(organ) or organ

    async def fetch(
        self, codes: Iterable[str], *, offline_ok: bool = True
    ) -> dict[str, DirectoryEntry]:
        """Entries of ``codes``, fresh from the hub when it answers, else from the cache.

        Codes the hub does not know are left out; the caller decides if that is an error.
        """
        wanted = sorted(set(codes))
        out: dict[str, DirectoryEntry] = {}
        if not wanted:
            return out
        if self.client is not None:
            try:
                found, _unknown = await self.client.entries(wanted)
            except HubUnavailable:
                if not offline_ok:
                    raise
            else:
                for code, signed in found.items():
                    self._remember(signed)
                    # A newer serial in the cache wins (no rollback to a revoked key).
                    cached = self.cached(code)
                    out[code] = (
                        cached
                        if cached is not None and cached.serial > signed.entry.serial
                        else signed.entry
                    )
                return out
        for code in wanted:
            entry = self.cached(code)
            if entry is not None:
                out[code] = entry
        missing = [c for c in wanted if c not in out]
        if missing and self.client is not None:
            raise HubUnavailable(f"no cached directory entry for {', '.join(missing[:5])}")
        return out

    async def entry(self, organ: str) -> DirectoryEntry:
        found = await self.fetch([organ])
        if organ not in found:
            raise RemoteError("organ_unknown", f"{organ} is not in the directory")
        return found[organ]

    async def below(self, organ: str, depth: int) -> list[str]:
        """Organs up to ``depth`` levels below ``organ`` (offices valid now)."""
        check_organ_code(organ)
        if self.client is not None:
            try:
                entries = await self.client.children(organ, depth)
            except HubUnavailable:
                pass
            else:
                for signed in entries:
                    self._remember(signed)
                return sorted(s.entry.organ for s in entries if s.entry.role == "office")
        # Offline: walk the parent links of the cached (verified) entries.
        out: list[str] = []
        level = [organ]
        for _ in range(depth):
            nxt: list[str] = []
            for parent in level:
                nxt.extend(self.store.cached_children(parent))
            nxt = [c for c in nxt if c not in out]
            if not nxt:
                break
            out.extend(nxt)
            level = nxt
        now = int(time.time())
        result = []
        for code in out:
            entry = self.cached(code)
            if entry is None or entry.role != "office":
                continue
            try:
                entry.check_valid(now)
            except RemoteError:
                continue
            result.append(code)
        if not result and self.client is not None:
            raise HubUnavailable(f"the organs below {organ} are not cached")
        return sorted(result)

    async def resolve(self, own: str, codes: Sequence[str]) -> list[Resolved]:
        """Recipient entries for ``codes``: successors followed, non-offices refused."""
        now = int(time.time())
        pending = list(dict.fromkeys(codes))
        for code in pending:
            try:
                check_organ_code(code)
            except RemoteError as exc:
                raise NodeError("recipient_invalid", exc.detail) from None
        found = await self.fetch(pending)
        out: dict[str, Resolved] = {}
        for code in pending:
            entry = found.get(code)
            hops = 0
            while True:
                if entry is None:
                    raise NodeError("recipient_unknown", f"{code} is not in the directory")
                try:
                    entry.check_valid(now)
                    break
                except RemoteError:
                    if entry.successor is None or hops >= SUCCESSOR_HOPS:
                        raise NodeError(
                            "recipient_not_valid", f"{entry.organ} is no longer valid"
                        ) from None
                    hops += 1
                    successor = entry.successor
                    entry = (await self.fetch([successor])).get(successor)
            if entry.role != "office":
                raise NodeError("recipient_invalid", f"{entry.organ} is not an office")
            if entry.organ == own:
                continue
            out.setdefault(entry.organ, Resolved(entry.organ, entry, code))
        return list(out.values())
