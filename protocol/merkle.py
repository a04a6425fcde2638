"""RFC 6962 / RFC 9162 Merkle tree hashing for the audit log.

The audit log (DESIGN.md §5) is a Merkle tree over its entries.  This module computes its
roots and proofs, verifies proofs received from a peer, and maintains the tree as leaves are
appended -- all over bytes, with storage left to the caller.

Storage model (after Go's ``golang.org/x/mod/sumdb/tlog``): the hash of every *complete*
subtree is a "stored hash", addressed by ``(level, index)``: the node covering leaves
``[index * 2**level, (index + 1) * 2**level)``.  Level 0 holds the leaf hashes.  Stored
hashes never change once written, so a database can keep them in an append-only table.
Any root or proof of a tree of ``n`` leaves is then a fold over O(log n) stored hashes, which
:func:`tree_hash`, :func:`inclusion_proof` and :func:`consistency_proof` fetch with a
single :meth:`HashReader.read_hashes` call so a database answers in one round trip.

Appending is done by a :class:`Frontier` (a compact range): it keeps the O(log n) hashes
of the right edge and reports, for each new leaf, the stored hashes it completes.

Verification follows RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency) step by
step; every failure on a peer's input is a :class:`~protocol.errors.RemoteError` with code
``proof_invalid`` or ``tree_size_invalid``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final, Protocol

from protocol.errors import LocalError, RemoteError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Frontier",
    "HashReader",
    "MemoryHashStore",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "tree_hash",
    "verify_consistency",
    "verify_inclusion",
]

#: Size of every hash in the tree (SHA-256).
HASH_SIZE: Final = 32

#: RFC 9162 carries tree sizes and leaf indexes as uint64.
MAX_TREE_SIZE: Final = (1 << 64) - 1

#: Root of the empty tree: SHA-256 of the empty string (RFC 6962 §2.1).
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()

# Proofs in a uint64-sized tree hold at most about 64 hashes.  Anything past this generous
# bound is refused before any per-element work, so a peer cannot make us walk a huge list.
_MAX_PROOF_LEN: Final = 2 * 64

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Hash of a leaf: SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


class HashReader(Protocol):
    """Reads stored hashes, many per call, so a database can answer in one round trip."""

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the stored hashes at ``(level, index)``, in the order asked.

        Must return exactly one 32-byte hash per requested coordinate, or raise.
        """
        ...


# --- tree geometry ------------------------------------------------------------------------


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """Stored-hash coordinates of the maximal complete subtrees covering ``[lo, hi)``.

    Left to right, largest first.  Every range this module asks for starts at a multiple of
    a power of two at least ``hi - lo``, so each chunk is aligned and really is stored.
    """
    out: list[tuple[int, int]] = []
    width = hi - lo
    level = width.bit_length() - 1
    while level >= 0:
        if (width >> level) & 1:
            out.append((level, lo >> level))
            lo += 1 << level
        level -= 1
    return out


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Root of adjacent complete subtrees (largest first): each joins everything to its right."""
    h = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        h = node_hash(hashes[i], h)
    return h


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the RFC 6962 PATH(index, D[0:size]), leaf side first."""
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    out.reverse()
    return out


def _consistency_ranges(old_size: int, new_size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form RFC 6962 PROOF(old_size, D[0:new_size]), in order.

    Only for ``0 < old_size < new_size``.  ``lo == 0`` plays the role of the RFC's flag b:
    while the walk has only gone left, the old tree's root is a node the verifier already
    holds, so it is not sent.
    """
    out: list[tuple[int, int]] = []
    lo, hi = 0, new_size
    while old_size != hi:
        k = _split(hi - lo)
        if old_size <= lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
    if lo != 0:
        out.append((lo, hi))
    out.reverse()
    return out


def _read_ranges(ranges: Sequence[tuple[int, int]], reader: HashReader) -> list[bytes]:
    """Hashes of the given leaf ranges, fetched with one ``read_hashes`` call."""
    groups = [_subtrees(lo, hi) for lo, hi in ranges]
    wanted = [coord for group in groups for coord in group]
    if not wanted:
        return []
    got = reader.read_hashes(wanted)
    if len(got) != len(wanted):
        raise LocalError(f"read_hashes returned {len(got)} hashes for {len(wanted)} asked")
    out: list[bytes] = []
    pos = 0
    for group in groups:
        end = pos + len(group)
        out.append(_fold(got[pos:end]) if end - pos > 1 else got[pos])
        pos = end
    return out


def _check_size(size: int, what: str = "tree size") -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise RemoteError("tree_size_invalid", f"{what} {size} is outside 0..2^64-1")


# --- roots and proofs from stored hashes --------------------------------------------------


def tree_hash(size: int, reader: HashReader) -> bytes:
    """Root hash of the first ``size`` leaves, from at most 64 stored hashes in one read."""
    _check_size(size)
    if size == 0:
        return EMPTY_ROOT
    return _read_ranges([(0, size)], reader)[0]


def inclusion_proof(index: int, size: int, reader: HashReader) -> list[bytes]:
    """RFC 6962 audit path for leaf ``index`` in the tree of ``size`` leaves.

    The caller must ensure ``size`` does not exceed the leaves it has stored; the ranges
    asked of ``reader`` then always exist.  Raises ``tree_size_invalid`` if ``index`` is
    not a leaf of that tree.
    """
    _check_size(size)
    if not 0 <= index < size:
        raise RemoteError("tree_size_invalid", f"leaf index {index} not in a tree of {size}")
    return _read_ranges(_inclusion_ranges(index, size), reader)


def consistency_proof(old_size: int, new_size: int, reader: HashReader) -> list[bytes]:
    """RFC 6962 consistency proof from the tree of ``old_size`` to that of ``new_size``.

    Empty when ``old_size`` is 0 or equal to ``new_size``: those are consistent by
    definition (see :func:`verify_consistency`).
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise RemoteError("tree_size_invalid", f"old size {old_size} > new size {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    return _read_ranges(_consistency_ranges(old_size, new_size), reader)


# --- verification (RFC 9162) --------------------------------------------------------------


def _fail(detail: str) -> RemoteError:
    return RemoteError("proof_invalid", detail)


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise _fail(f"{what} is {len(h)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2.  ``root`` must be the root of a tree of exactly ``size`` leaves (as
    a signed checkpoint binds them): the algorithm checks the proof's shape against
    ``size`` but cannot tell two sizes whose paths have the same shape apart.
    """
    _check_size(size)
    if not 0 <= index < size:
        raise RemoteError("tree_size_invalid", f"leaf index {index} not in a tree of {size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root hash")
    if len(proof) > _MAX_PROOF_LEN:
        raise _fail(f"inclusion proof of {len(proof)} hashes is too long")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        _check_hash(p, "proof hash")
        if sn == 0:
            raise _fail("inclusion proof has more hashes than the path")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level and has no right sibling: climb past the
                # levels where it is promoted unchanged.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("inclusion proof has fewer hashes than the path")
    if r != root:
        raise _fail("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``new_size``/``new_root`` extends that of ``old_size``/``old_root``.

    RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``.  The RFC leaves the trivial cases to
    the caller; here they need an empty proof, and equal sizes need equal roots.  Unlike
    some implementations, an old size of 0 requires ``old_root`` to be :data:`EMPTY_ROOT`:
    a checkpoint of the empty tree with any other root is false.
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise RemoteError("tree_size_invalid", f"old size {old_size} > new size {new_size}")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    if len(proof) > _MAX_PROOF_LEN:
        raise _fail(f"consistency proof of {len(proof)} hashes is too long")
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise _fail("the root of the empty tree is SHA-256 of the empty string")
    if old_size == new_size:
        if proof:
            raise _fail("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise _fail("two different roots for the same tree size")
        return
    if old_size == 0:
        if proof:
            raise _fail("consistency proof from the empty tree must be empty")
        return

    if not proof:
        raise _fail("consistency proof is empty")
    for p in proof:
        _check_hash(p, "proof hash")
    path: list[bytes] = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree of the new one, so the proof omits its root.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail("consistency proof has more hashes than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("consistency proof has fewer hashes than needed")
    if fr != old_root:
        raise _fail("consistency proof does not lead to the old root")
    if sr != new_root:
        raise _fail("consistency proof does not lead to the new root")


# --- appending ----------------------------------------------------------------------------


class Frontier:
    """The right edge of a growing tree: one hash per complete subtree of its leaves.

    A tree of ``n`` leaves is, left to right, the complete subtrees given by the set bits of
    ``n`` (largest first); their hashes are all that is needed to append a leaf or compute
    the root.  This is what a log's sequencer keeps in memory between batches.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """A frontier for a tree of ``size`` leaves whose complete subtrees hash to ``hashes``."""
        if not 0 <= size <= MAX_TREE_SIZE:
            raise LocalError(f"tree size {size} outside 0..2^64-1")
        if len(hashes) != size.bit_count():
            raise LocalError(f"a tree of {size} leaves has {size.bit_count()} right-edge hashes")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise LocalError("frontier hashes must be 32 bytes")
        self._size = size
        self._hashes = list(hashes)

    @classmethod
    def from_reader(cls, size: int, reader: HashReader) -> Frontier:
        """Rebuild the frontier of the first ``size`` leaves (after a restart), in one read."""
        if not 0 <= size <= MAX_TREE_SIZE:
            raise LocalError(f"tree size {size} outside 0..2^64-1")
        if size == 0:
            return cls()
        wanted = _subtrees(0, size)
        got = reader.read_hashes(wanted)
        if len(got) != len(wanted):
            raise LocalError(f"read_hashes returned {len(got)} hashes for {len(wanted)} asked")
        return cls(size, got)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Hashes of the complete subtrees of the tree, largest (leftmost) first."""
        return tuple(self._hashes)

    def copy(self) -> Frontier:
        """An independent copy, e.g. to stage a batch that may yet be rolled back."""
        return Frontier(self._size, self._hashes)

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf; return the stored hashes ``(level, index, hash)`` it creates.

        The first is the leaf itself at level 0; each further one is a subtree this leaf
        completes.  Persisting all of them keeps a :class:`HashReader` able to answer
        every later root and proof.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise LocalError("a leaf hash must be 32 bytes")
        n = self._size
        if n == MAX_TREE_SIZE:
            raise LocalError("the tree is full")
        h = leaf_hash
        created = [(0, n, h)]
        hashes = self._hashes
        level = 0
        # Every trailing 1 bit of n is a complete subtree on the edge that the new leaf's
        # subtree now pairs with.
        while (n >> level) & 1:
            h = node_hash(hashes.pop(), h)
            level += 1
            created.append((level, n >> level, h))
        hashes.append(h)
        self._size = n + 1
        return created

    def root(self) -> bytes:
        """Root hash of the tree so far."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold(self._hashes)


class MemoryHashStore:
    """A :class:`HashReader` over a dict that also appends: for tests and small logs."""

    __slots__ = ("_frontier", "_hashes")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """An empty store, then ``leaf_hashes`` appended in order."""
        self._hashes: dict[tuple[int, int], bytes] = {}
        self._frontier = Frontier()
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """Number of leaves stored."""
        return self._frontier.size

    def root(self) -> bytes:
        """Root hash of all leaves stored."""
        return self._frontier.root()

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf; return (and keep) the stored hashes it creates."""
        created = self._frontier.append(leaf_hash)
        for level, index, h in created:
            self._hashes[level, index] = h
        return created

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaves."""
        for h in leaf_hashes:
            self.append(h)

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        """The stored hashes at ``(level, index)``; a missing one is a caller bug."""
        try:
            return [self._hashes[coord] for coord in indexes]
        except KeyError as exc:
            raise LocalError(f"no stored hash at (level, index) {exc.args[0]}") from None
