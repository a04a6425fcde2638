"""Tests of protocol.merkle: CT test vectors, proof properties, the frontier, read counts."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.errors import LocalError, RemoteError
from protocol.merkle import (
    EMPTY_ROOT,
    MAX_TREE_SIZE,
    Frontier,
    MemoryHashStore,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

# --- RFC 6962 reference vectors (Certificate Transparency / transparency-dev merkle) -------

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]

# ROOTS[n - 1] is the root of the tree of the first n leaves.
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _hs(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


# (leaf index, tree size, proof); the reference files number leaves from 1.
INCLUSION_VECTORS = [
    (0, 1, []),
    (
        0,
        8,
        _hs(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _hs(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, _hs("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        _hs(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

# (old size, new size, proof)
CONSISTENCY_VECTORS = [
    (1, 1, []),
    (
        1,
        8,
        _hs(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _hs(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _hs(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _hs(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
PROOF_CODES = {"proof_invalid", "tree_size_invalid"}


@pytest.fixture(scope="module")
def ct_store() -> MemoryHashStore:
    return MemoryHashStore(leaf_hash(data) for data in LEAVES)


def _rejected(call: object, *args: object) -> str:
    """Run a verifier expected to fail; return its error code."""
    assert callable(call)
    with pytest.raises(RemoteError) as info:
        call(*args)
    assert info.value.code in PROOF_CODES
    return info.value.code


def _outcome(call: object, *args: object) -> str | None:
    """Run a verifier; return its error code, or None if it accepted."""
    assert callable(call)
    try:
        call(*args)
    except RemoteError as exc:
        return exc.code
    return None


def test_hash_primitives() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == ROOTS[0]
    assert node_hash(leaf_hash(b""), leaf_hash(b"\x00")) == ROOTS[1]


def test_roots_of_reference_vectors(ct_store: MemoryHashStore) -> None:
    assert tree_hash(0, ct_store) == EMPTY_ROOT
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for n in range(1, 9):
        assert tree_hash(n, ct_store) == ROOTS[n - 1], n
        frontier.append(leaf_hash(LEAVES[n - 1]))
        assert frontier.root() == ROOTS[n - 1], n
    assert ct_store.root() == ROOTS[7]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION_VECTORS)
def test_reference_inclusion_proofs(
    ct_store: MemoryHashStore, index: int, size: int, proof: list[bytes]
) -> None:
    assert inclusion_proof(index, size, ct_store) == proof
    leaf = leaf_hash(LEAVES[index])
    root = ROOTS[size - 1]
    verify_inclusion(leaf, index, size, proof, root)
    # The corruptions of transparency-dev/merkle's verifier tests.
    probes: list[tuple[bytes, int, int, Sequence[bytes], bytes]] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (b"WrongLeaf", index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((leaf, index, size, wrong, root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        probes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
    for probe in probes:
        _rejected(verify_inclusion, *probe)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_VECTORS)
def test_reference_consistency_proofs(
    ct_store: MemoryHashStore, old: int, new: int, proof: list[bytes]
) -> None:
    assert consistency_proof(old, new, ct_store) == proof
    root1, root2 = ROOTS[old - 1], ROOTS[new - 1]
    verify_consistency(old, new, root1, root2, proof)
    if not proof:
        return
    probes: list[tuple[int, int, bytes, bytes, Sequence[bytes]]] = [
        (old - 1, new, root1, root2, proof),
        (old + 1, new, root1, root2, proof),
        (old ^ 2, new, root1, root2, proof),
        (old, new * 2, root1, root2, proof),
        (old, new // 2, root1, root2, proof),
        (old, new, b"WrongRoot", root2, proof),
        (old, new, root1, b"WrongRoot", proof),
        (old, new, root2, root1, proof),
        (old, new, root1, root2, []),
        (old, new, root1, root2, [*proof, b""]),
        (old, new, root1, root2, [*proof, root1]),
        (old, new, root1, root2, [*proof, root2]),
        (old, new, root1, root2, [b"", *proof]),
        (old, new, root1, root2, [root1, *proof]),
        (old, new, root1, root2, [root2, *proof]),
        (old, new, root1, root2, [proof[0], *proof]),
        (old, new, root1, root2, proof[:-1]),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((old, new, root1, root2, wrong))
    for probe in probes:
        _rejected(verify_consistency, *probe)


def test_inclusion_edge_cases() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(leaf, 0, 1, [], leaf)
    assert _rejected(verify_inclusion, leaf, 0, 1, [], b"") == "proof_invalid"
    assert _rejected(verify_inclusion, b"", 0, 1, [], leaf) == "proof_invalid"
    assert _rejected(verify_inclusion, leaf, 0, 1, [leaf], leaf) == "proof_invalid"
    for index, size in [(0, 0), (1, 0), (1, 1), (2, 1), (-1, 5), (0, MAX_TREE_SIZE + 1)]:
        assert _rejected(verify_inclusion, SOME_HASH, index, size, [], EMPTY_ROOT) == (
            "tree_size_invalid"
        )
    too_long = [SOME_HASH] * 1000
    assert _rejected(verify_inclusion, leaf, 0, 2, too_long, leaf) == "proof_invalid"


def test_consistency_edge_cases() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, SOME_HASH, [])
    verify_consistency(3, 3, SOME_HASH, SOME_HASH, [])
    cases: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (0, 0, SOME_HASH, SOME_HASH, []),  # size 0 has one root
        (0, 1, SOME_HASH, SOME_HASH, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (0, 1, EMPTY_ROOT, SOME_HASH, [EMPTY_ROOT]),
        (1, 1, SOME_HASH, EMPTY_ROOT, []),  # same size, another root: a fork
        (1, 1, SOME_HASH, SOME_HASH, [SOME_HASH]),
        (1, 2, SOME_HASH, EMPTY_ROOT, []),
        (1, 2, SOME_HASH[:31], EMPTY_ROOT, [SOME_HASH]),
    ]
    for case in cases:
        assert _rejected(verify_consistency, *case) == "proof_invalid", case
    for old, new in [(1, 0), (2, 1), (-1, 1), (1, MAX_TREE_SIZE + 1)]:
        assert _rejected(verify_consistency, old, new, SOME_HASH, SOME_HASH, []) == (
            "tree_size_invalid"
        )


def test_prover_rejects_bad_ranges(ct_store: MemoryHashStore) -> None:
    for index, size in [(0, 0), (8, 8), (-1, 3)]:
        with pytest.raises(RemoteError) as info:
            inclusion_proof(index, size, ct_store)
        assert info.value.code == "tree_size_invalid"
    with pytest.raises(RemoteError) as info:
        consistency_proof(5, 4, ct_store)
    assert info.value.code == "tree_size_invalid"
    assert consistency_proof(0, 8, ct_store) == []
    assert consistency_proof(8, 8, ct_store) == []
    with pytest.raises(LocalError):  # asking beyond what is stored is the caller's bug
        tree_hash(9, ct_store)


# --- property tests on a random-content tree ----------------------------------------------

MAX_N = 300


@cache
def _store() -> MemoryHashStore:
    # Every stored hash of a prefix is also a stored hash of the whole tree, so one store of
    # MAX_N leaves answers for every size up to MAX_N.
    return MemoryHashStore(leaf_hash(b"leaf %d" % i) for i in range(MAX_N))


@cache
def _root(size: int) -> bytes:
    return tree_hash(size, _store())


def _leaf(index: int) -> bytes:
    return leaf_hash(b"leaf %d" % index)


def _reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH straight from RFC 6962 §2.1, for cross-checking the stored-hash arithmetic."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


def test_tree_hash_matches_rfc_definition() -> None:
    leaves = [_leaf(i) for i in range(MAX_N)]
    for n in range(MAX_N + 1):
        assert _root(n) == _reference_root(leaves[:n]), n


sizes = st.integers(min_value=1, max_value=MAX_N)


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(sizes)
    return draw(st.integers(min_value=0, max_value=size - 1)), size


@st.composite
def tree_pair(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(min_value=0, max_value=MAX_N))
    return draw(st.integers(min_value=0, max_value=new)), new


def _flip(proof: list[bytes], data: st.DataObject) -> list[bytes]:
    i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    j = data.draw(st.integers(min_value=0, max_value=31))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    out = list(proof)
    h = bytearray(out[i])
    h[j] ^= 1 << bit
    out[i] = bytes(h)
    return out


@given(leaf_in_tree(), st.data())
@settings(deadline=None)
def test_inclusion_proofs_verify_and_resist_tampering(
    case: tuple[int, int], data: st.DataObject
) -> None:
    index, size = case
    store = _store()
    proof = inclusion_proof(index, size, store)
    leaf, root = _leaf(index), _root(size)
    verify_inclusion(leaf, index, size, proof, root)
    assert len(proof) <= size.bit_length()

    if proof:
        _rejected(verify_inclusion, leaf, index, size, _flip(proof, data), root)
        cut = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        _rejected(verify_inclusion, leaf, index, size, proof[:cut], root)
    extra = data.draw(st.binary(min_size=32, max_size=32))
    _rejected(verify_inclusion, leaf, index, size, [*proof, extra], root)
    _rejected(verify_inclusion, leaf, index, size, [extra, *proof], root)

    # Another leaf of the same tree: its true leaf hash, the wrong path.
    other = data.draw(st.integers(min_value=0, max_value=size - 1))
    if other != index:
        assert _rejected(verify_inclusion, _leaf(other), other, size, proof, root) == (
            "proof_invalid"
        )
    out_of_range = data.draw(st.integers(min_value=size, max_value=MAX_TREE_SIZE + 5))
    assert _rejected(verify_inclusion, leaf, out_of_range, size, proof, root) == (
        "tree_size_invalid"
    )

    # Another size, with that size's true root (the checkpoint binds size and root): the
    # proof for this size must not pass there unless it is that size's proof too.
    other_size = data.draw(sizes)
    assume(other_size != size)
    if index < other_size:
        other_root = _root(other_size)
        code = _outcome(verify_inclusion, leaf, index, other_size, proof, other_root)
        if code is None:
            assert proof == inclusion_proof(index, other_size, store)
        else:
            assert code in PROOF_CODES
    else:
        assert _rejected(verify_inclusion, leaf, index, other_size, proof, _root(other_size)) == (
            "tree_size_invalid"
        )


@given(tree_pair(), st.data())
@settings(deadline=None)
def test_consistency_proofs_verify_and_resist_tampering(
    case: tuple[int, int], data: st.DataObject
) -> None:
    old, new = case
    store = _store()
    proof = consistency_proof(old, new, store)
    old_root, new_root = _root(old), _root(new)
    verify_consistency(old, new, old_root, new_root, proof)
    assert len(proof) <= 2 * new.bit_length()

    if proof:
        _rejected(verify_consistency, old, new, old_root, new_root, _flip(proof, data))
        cut = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        _rejected(verify_consistency, old, new, old_root, new_root, proof[:cut])
    extra = data.draw(st.binary(min_size=32, max_size=32))
    _rejected(verify_consistency, old, new, old_root, new_root, [*proof, extra])
    _rejected(verify_consistency, old, new, old_root, new_root, [extra, *proof])
    flipped = [bytes([old_root[0] ^ 1]) + old_root[1:], bytes([new_root[0] ^ 1]) + new_root[1:]]
    _rejected(verify_consistency, old, new, flipped[0], new_root, proof)
    if old != 0:  # from the empty tree, any new root is consistent
        _rejected(verify_consistency, old, new, old_root, flipped[1], proof)

    # Another old size with its true root.
    other = data.draw(st.integers(min_value=0, max_value=MAX_N))
    assume(other != old)
    if other <= new:
        code = _outcome(verify_consistency, other, new, _root(other), new_root, proof)
        if code is None:
            assert proof == consistency_proof(other, new, store)
        else:
            assert code in PROOF_CODES
    else:
        assert _rejected(verify_consistency, other, new, _root(other), new_root, proof) == (
            "tree_size_invalid"
        )


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=3), tree_pair())
def test_random_consistency_proofs_rejected(proof: list[bytes], case: tuple[int, int]) -> None:
    old, new = case
    assume(proof != consistency_proof(old, new, _store()))
    # Passing would mean a SHA-256 collision or a verifier bug.
    assert _outcome(verify_consistency, old, new, _root(old), _root(new), proof) in PROOF_CODES


# --- the frontier -------------------------------------------------------------------------


def test_frontier_matches_tree_hash_and_stored_hashes() -> None:
    store = _store()
    frontier = Frontier()
    mirror = MemoryHashStore()
    for n in range(MAX_N):
        assert frontier.size == n
        assert frontier.root() == _root(n)
        created = frontier.append(_leaf(n))
        assert created == mirror.append(_leaf(n))
        assert created[0] == (0, n, _leaf(n))
        # The leaf plus one hash per subtree it completes (trailing one bits of n).
        trailing_ones = (n ^ (n + 1)).bit_length() - 1
        assert len(created) == 1 + trailing_ones
        for level, index, h in created:
            assert store.read_hashes([(level, index)]) == [h]
            assert (index + 1) << level == n + 1  # completes exactly at this leaf
    assert frontier.root() == _root(MAX_N)


@given(st.integers(min_value=0, max_value=MAX_N - 20), st.integers(min_value=0, max_value=20))
def test_frontier_from_reader_round_trips(size: int, more: int) -> None:
    store = _store()
    frontier = Frontier.from_reader(size, store)
    assert frontier.size == size
    assert frontier.root() == _root(size)
    assert Frontier(frontier.size, frontier.hashes).root() == _root(size)
    staged = frontier.copy()
    for i in range(size, size + more):
        staged.append(_leaf(i))
    assert staged.root() == _root(size + more)
    assert frontier.root() == _root(size)  # the copy is independent


def test_frontier_rejects_misuse() -> None:
    with pytest.raises(LocalError):
        Frontier(3, [SOME_HASH])
    with pytest.raises(LocalError):
        Frontier(1, [b"short"])
    with pytest.raises(LocalError):
        Frontier().append(b"short")
    with pytest.raises(LocalError):
        Frontier(-1)
    full = Frontier(MAX_TREE_SIZE, [SOME_HASH] * 64)
    with pytest.raises(LocalError):
        full.append(SOME_HASH)


# --- read counts: O(log n) hashes in one batched read -------------------------------------


class CountingReader:
    """Wraps a reader and records every read_hashes call."""

    def __init__(self, inner: MemoryHashStore | UniformTree) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        self.calls.append(len(indexes))
        return self.inner.read_hashes(indexes)


class UniformTree:
    """A virtual tree of ``size`` identical leaves: stored hashes depend only on the level.

    Lets a million-leaf tree be read without building it; reads must stay inside it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.levels = [leaf_hash(b"same")]
        while len(self.levels) < 64:
            self.levels.append(node_hash(self.levels[-1], self.levels[-1]))

    def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
        for level, index in indexes:
            assert index >= 0
            assert (index + 1) << level <= self.size, (level, index)
        return [self.levels[level] for level, _ in indexes]

    @cache  # noqa: B019 - a handful of instances, kept for the test run
    def root(self, size: int) -> bytes:
        if size == 1:
            return self.levels[0]
        k = 1 << ((size - 1).bit_length() - 1)
        return node_hash(self.root(k), self.root(size - k))


@pytest.mark.parametrize("size", [1_000_000, 1 << 20, (1 << 20) + 1, 999_983])
def test_million_leaf_proofs_read_log_n_hashes_in_one_call(size: int) -> None:
    tree = UniformTree(size)
    bound = 2 * size.bit_length()
    root = tree.root(size)

    reader = CountingReader(tree)
    assert tree_hash(size, reader) == root
    assert len(reader.calls) == 1
    assert reader.calls[0] <= size.bit_length()

    for index in [0, 1, size // 3, size // 2, size - 2, size - 1]:
        reader = CountingReader(tree)
        proof = inclusion_proof(index, size, reader)
        assert len(reader.calls) <= 1
        assert sum(reader.calls) <= bound
        verify_inclusion(tree.levels[0], index, size, proof, root)

    for old in [1, 2, 3, 1000, 524_288, size // 2 + 1, size - 1]:
        reader = CountingReader(tree)
        proof = consistency_proof(old, size, reader)
        assert len(reader.calls) <= 1
        assert sum(reader.calls) <= bound
        verify_consistency(old, size, tree.root(old), root, proof)

    reader = CountingReader(tree)
    frontier = Frontier.from_reader(size, reader)
    assert reader.calls == [size.bit_count()]
    assert frontier.root() == root


def test_real_store_reads_once() -> None:
    store = _store()
    for size in [1, 2, 7, 64, 100, MAX_N]:
        for index in {0, size // 2, size - 1}:
            reader = CountingReader(store)
            inclusion_proof(index, size, reader)
            assert len(reader.calls) <= 1
        for old in {1, size // 2, size - 1} - {0}:
            reader = CountingReader(store)
            consistency_proof(old, size, reader)
            assert len(reader.calls) <= 1


def test_short_read_is_a_local_error() -> None:
    class Short:
        def read_hashes(self, indexes: Sequence[tuple[int, int]]) -> list[bytes]:
            return []

    with pytest.raises(LocalError):
        tree_hash(5, Short())
    with pytest.raises(LocalError):
        Frontier.from_reader(5, Short())
