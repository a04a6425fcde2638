"""Tests of protocol.packet: sealing, parsing, verifying and opening packets.

* Hypothesis round trips over random file sets, recipients (classic and hybrid keys
  mixed), Vietnamese names in NFC and NFD, and random feed sizes on both sides.
* One negative test per check, each expecting exactly its error code.  Checks that sit
  behind the envelope signature are reached with *malicious but validly signed*
  envelopes: the signed body is decoded, mutated, re-encoded and re-signed with the
  sender's own key, as a compromised or dishonest sender could.
* Bounded memory: a 64 MiB stream through the sealer and the opener, watching their
  internal buffers.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import signed
from protocol.codec import decode, encode
from protocol.directory import FOREVER, DirectoryEntry, KeyRecord
from protocol.errors import LocalError, RemoteError
from protocol.keys import EncryptionPrivateKey, SigningPrivateKey
from protocol.packet import (
    _META_NONCE,
    CHUNK_MAX,
    CHUNK_MIN,
    TAG,
    BodyVerifier,
    DocumentMetadata,
    Envelope,
    FileInfo,
    Opener,
    Recipient,
    Reference,
    Routing,
    Sealer,
    _derive,
    check_file_name,
    check_packet_id,
    chunk_count,
    ciphertext_size,
    new_packet_id,
    open_packet,
    parse_envelope,
    seal_packet,
    wrap_info,
)

KIB = 1024
MIB = 1024 * KIB
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
CREATED = T0 + 86_400
YEAR = 365 * 86_400

SENDER = "000.00.00.H41"  # Văn phòng Tỉnh ủy
HYBRID_SENDER = "TU-HN"
OTHER_ORGAN = "DU-PHUCYEN"
ORGANS = [f"DU-X{i:02d}" for i in range(20)]

SUBJECTS = [
    "Kế hoạch tổ chức Hội nghị tổng kết công tác văn phòng cấp ủy năm 2025",
    "Báo cáo kết quả thực hiện Nghị quyết số 05-NQ/TU quý III",
    "Công văn về việc triển khai Chỉ thị số 12-CT/TW của Ban Bí thư",
    "Thông báo kết luận của Thường trực Tỉnh ủy\nvề công tác cán bộ tháng 9",
    "Hướng dẫn thực hiện quy định về công tác văn thư, lưu trữ trong các cơ quan Đảng " * 20,
    "",
]
FILE_NAMES = [
    "Báo cáo quý III.pdf",
    "Kế hoạch số 123-KH-TU.docx",
    "Phụ lục - Danh sách đảng viên.xlsx",
    "Tờ trình.pdf",
    "Quyết định bổ nhiệm cán bộ.pdf",
    "ảnh chụp hội nghị.jpg",
    "README",
]
MEDIA = ["application/pdf", "application/octet-stream", "image/jpeg", "text/plain"]


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _code(call: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    with pytest.raises(RemoteError) as info:
        call(*args, **kwargs)
    return info.value.code


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# --- keys and directory entries (made once) ----------------------------------------


@cache
def signing_key(organ: str, hybrid: bool = False) -> SigningPrivateKey:
    return SigningPrivateKey.generate(hybrid=hybrid)


@cache
def enc_key(organ: str, hybrid: bool) -> EncryptionPrivateKey:
    return EncryptionPrivateKey.generate(hybrid=hybrid)


def sender_entry(
    organ: str,
    key: SigningPrivateKey,
    *,
    not_before: int = T0,
    not_after: int = T0 + YEAR,
    revoked_at: int | None = None,
    valid_from: int = T0,
    valid_until: int | None = None,
) -> DirectoryEntry:
    pub = key.public_key()
    enc = enc_key(organ, False).public_key()
    return DirectoryEntry(
        organ=organ,
        name="Văn phòng Tỉnh ủy",
        role="office",
        level="province",
        signing_keys=(KeyRecord(pub.alg, pub.raw, not_before, not_after, revoked_at),),
        encryption_keys=(KeyRecord(enc.alg, enc.raw, T0, FOREVER),),
        valid_from=valid_from,
        valid_until=valid_until,
        serial=1,
        issued_at=T0,
        authority_kid=b"\x00" * 32,
    )


def recipient(organ: str, hybrid: bool) -> Recipient:
    return Recipient(organ, enc_key(organ, hybrid).public_key())


def metadata(subject: str = SUBJECTS[0]) -> DocumentMetadata:
    return DocumentMetadata(
        subject=subject,
        doc_type="KH",
        number="123",
        notation="KH/TU",
        signer="T/M Ban Thường vụ, Phó Bí thư Thường trực Nguyễn Văn An",
        issued="2025-09-30",
        place="Hà Nội",
        notes="Gửi kèm phụ lục.\nĐề nghị các đồng chí nghiên cứu trước.",
    )


def cut(data: bytes, splits: Sequence[int], max_pieces: int = 256) -> Iterator[bytes]:
    """``data`` in pieces of the given sizes, cycled.

    The sizes are scaled up when they would make more than ``max_pieces`` pieces, so a
    1-byte split over a few MiB stays a handful of calls while small inputs still get cut
    at every byte.
    """
    sizes = [s for s in splits if s > 0] or [len(data) or 1]
    scale = max(1, -(-len(data) * len(sizes) // (sum(sizes) * max_pieces)))
    pos = i = 0
    while pos < len(data):
        step = sizes[i % len(sizes)] * scale
        yield data[pos : pos + step]
        pos, i = pos + step, i + 1


def read_all(opener: Opener, body: bytes, splits: Sequence[int] = ()) -> list[bytes]:
    """Feed ``body`` to ``opener`` in pieces of the given sizes (cycled); collect files."""
    files = [bytearray() for _ in opener.metadata.files]
    pieces: list[tuple[int, bytes]] = []
    for piece in cut(body, splits):
        pieces += opener.feed(piece)
    pieces += opener.finish()
    for idx, piece in pieces:
        files[idx] += piece
    return [bytes(f) for f in files]


# --- a standard packet for the negative tests ---------------------------------------------

CEK = bytes(range(32))
PACKET_ID = new_packet_id(CREATED * 1000)
CLASSIC_TO = "CB-THCS-TAMHONG"  # Chi bộ Trường THCS Tam Hồng
HYBRID_TO = "DU-XYL"  # Đảng ủy xã Yên Lạc
FILES = [
    ("Báo cáo quý III.pdf", "application/pdf", blob(100_000, 1)),
    ("Danh sách trống.txt", "text/plain", b""),
    ("Phụ lục.xlsx", "application/octet-stream", blob(70_000, 2)),
]


@dataclass(frozen=True)
class Packet:
    env: bytes
    body: bytes
    sender: str
    key: SigningPrivateKey

    @property
    def parsed(self) -> Envelope:
        return parse_envelope(self.env)

    def chunks(self) -> list[bytes]:
        info = self.parsed.body_info
        full = info.chunk + TAG
        return [self.body[i : i + full] for i in range(0, len(self.body), full)]

    def entry(self, **kwargs: Any) -> DirectoryEntry:
        return sender_entry(self.sender, self.key, **kwargs)


def seal(
    *,
    sender: str = SENDER,
    hybrid_sender: bool = False,
    files: Sequence[tuple[str, str, bytes]] = FILES,
    to: Sequence[Recipient] | None = None,
    meta: DocumentMetadata | None = None,
    **kwargs: Any,
) -> Packet:
    key = signing_key(sender, hybrid_sender)
    kwargs.setdefault("created_at", CREATED)
    env, body = seal_packet(
        sender=sender,
        signing_key=key,
        recipients=to
        if to is not None
        else [recipient(CLASSIC_TO, False), recipient(HYBRID_TO, True)],
        metadata=meta or metadata(),
        files=files,
        **kwargs,
    )
    return Packet(env, body, sender, key)


@cache
def standard() -> Packet:
    return seal(packet_id=PACKET_ID, cek=CEK)


@cache
def hybrid_standard() -> Packet:
    return seal(sender=HYBRID_SENDER, hybrid_sender=True, packet_id=PACKET_ID, cek=CEK)


def resign(
    packet: Packet,
    mutate: Callable[[dict[str, Any]], None],
    *,
    key: SigningPrivateKey | None = None,
) -> bytes:
    """A malicious but validly signed envelope: mutate the signed body, sign it again."""
    container = signed.parse(packet.env, max_size=1 << 22, where="envelope")
    body = decode(container.body)
    mutate(body)
    return signed.sign(key or packet.key, signed.CTX_ENVELOPE, encode(body))


def reseal_meta(body: dict[str, Any], meta: DocumentMetadata) -> None:
    """Encrypt lying metadata with the packet's own key schedule (the CEK is known here)."""
    keys = _derive(CEK, body["id"])
    body["meta"] = keys.meta.encrypt(_META_NONCE, encode(meta.to_cbor()), body["id"])


def opener_for(env: bytes, organ: str = CLASSIC_TO, hybrid: bool = False) -> Opener:
    return Opener(parse_envelope(env), organ=organ, key=enc_key(organ, hybrid))


def open_with(env: bytes, body: bytes, organ: str = CLASSIC_TO, hybrid: bool = False) -> None:
    read_all(opener_for(env, organ, hybrid), body, [50_000])


# --- round trips ------------------------------------------------------------------------


def test_standard_packet_opens_for_every_recipient() -> None:
    pkt = standard()
    env = pkt.parsed
    env.verify_sender(pkt.entry())
    assert env.sender == SENDER
    assert env.sender_kid == pkt.key.kid
    assert env.packet_id == PACKET_ID
    assert env.packet_uuid.version == 7
    assert env.created_at == CREATED
    assert env.kind == "document"
    assert [s.organ for s in env.recipients] == sorted([CLASSIC_TO, HYBRID_TO])
    assert env.digest == hashlib.sha256(env.body).digest()
    assert env.raw == pkt.env
    assert env.body_info.size == len(pkt.body)
    assert env.body_info.sha256 == hashlib.sha256(pkt.body).digest()
    assert env.body_info.chunks == 3
    assert env.body_info.plaintext_size == sum(len(f[2]) for f in FILES)
    assert env.commitment == _derive(CEK, PACKET_ID).commitment
    for organ, hybrid in [(CLASSIC_TO, False), (HYBRID_TO, True)]:
        meta, files = open_packet(env, pkt.body, organ=organ, key=enc_key(organ, hybrid))
        assert files == [f[2] for f in FILES]
        assert meta.subject == SUBJECTS[0]
        assert [(fi.name, fi.media_type, fi.size) for fi in meta.files] == [
            (n, m, len(d)) for n, m, d in FILES
        ]
        assert [fi.sha256 for fi in meta.files] == [hashlib.sha256(d).digest() for _, _, d in FILES]
    verifier = BodyVerifier(env.body_info)
    verifier.feed(pkt.body)
    assert verifier.finish() == env.body_info.sha256


def test_hybrid_sender_verifies() -> None:
    pkt = hybrid_standard()
    env = pkt.parsed
    assert set(env.signatures) == {"ed25519", "mldsa65"}
    env.verify_sender(pkt.entry())
    # Body and the key schedule do not depend on the sender's key: same CEK, same body.
    assert pkt.body == standard().body


def test_body_is_deterministic_given_cek_and_packet_id() -> None:
    again = seal(packet_id=PACKET_ID, cek=CEK)
    assert again.body == standard().body
    a = decode(signed.parse(again.env, max_size=1 << 22, where="e").body)
    b = decode(signed.parse(standard().env, max_size=1 << 22, where="e").body)
    for stanza in a["to"] + b["to"]:
        stanza.pop("wrap")
    assert a == b


def test_empty_packet_and_no_files() -> None:
    pkt = seal(files=[])
    env = pkt.parsed
    assert env.body_info.size == TAG
    meta, files = open_packet(env, pkt.body, organ=CLASSIC_TO, key=enc_key(CLASSIC_TO, False))
    assert files == []
    assert meta.files == ()
    only_empty = seal(files=[("Tờ trình.pdf", "application/pdf", b"")] * 3)
    meta, files = open_packet(
        only_empty.parsed, only_empty.body, organ=HYBRID_TO, key=enc_key(HYBRID_TO, True)
    )
    assert files == [b"", b"", b""]


_file_sizes = st.sampled_from(
    ["0", "1", "c-1", "c", "c+1", "2c", "2c+1", "small", "small", "small", "big"]
)


def _size(kind: str, chunk: int, small: int) -> int:
    return {
        "0": 0,
        "1": 1,
        "c-1": chunk - 1,
        "c": chunk,
        "c+1": chunk + 1,
        "2c": 2 * chunk,
        "2c+1": 2 * chunk + 1,
        "small": small,
        "big": 2 * MIB + 17,
    }[kind]


@st.composite
def packets(draw: st.DrawFn) -> dict[str, Any]:
    chunk = draw(st.sampled_from([CHUNK_MIN, CHUNK_MIN, 128 * KIB, CHUNK_MAX]))
    n_files = draw(st.integers(0, 4))
    files = []
    total = 0
    for i in range(n_files):
        size = _size(draw(_file_sizes), chunk, draw(st.integers(0, 5000)))
        if total + size > 3 * MIB:  # a few MiB at most
            size = draw(st.integers(0, 5000))
        total += size
        name = draw(st.sampled_from(FILE_NAMES))
        files.append(
            (
                nfd(name) if draw(st.booleans()) else name,
                draw(st.sampled_from(MEDIA)),
                blob(size, draw(st.integers(0, 2**32)) + i),
            )
        )
    organs = draw(st.lists(st.sampled_from(ORGANS), min_size=1, max_size=20, unique=True))
    to = [recipient(o, draw(st.booleans())) for o in organs]
    subject = draw(st.sampled_from(SUBJECTS))
    return {
        "chunk": chunk,
        "files": files,
        "to": to,
        "subject": subject,
        "subject_in": nfd(subject) if draw(st.booleans()) else subject,
        "hybrid_sender": draw(st.booleans()),
        "seal_splits": draw(st.lists(st.integers(1, 200_000), min_size=1, max_size=5)),
        "open_splits": draw(st.lists(st.integers(1, 300_000), min_size=1, max_size=5)),
        "urgency": draw(st.integers(0, 4)),
    }


@settings(max_examples=40, deadline=None)
@given(packets())
def test_round_trip(p: dict[str, Any]) -> None:
    sender = HYBRID_SENDER if p["hybrid_sender"] else SENDER
    key = signing_key(sender, p["hybrid_sender"])
    meta_in = replace(metadata(p["subject_in"]), signer=nfd("Nguyễn Văn An"), place=nfd("Hà Nội"))
    sealer = Sealer(
        sender=sender,
        signing_key=key,
        recipients=p["to"],
        metadata=meta_in,
        routing=Routing(urgency=p["urgency"], reference=Reference("KH", "123", "KH/TU")),
        chunk_size=p["chunk"],
        created_at=CREATED,
    )
    body_parts: list[bytes] = []
    for name, media, data in p["files"]:
        sealer.add_file(name, media)
        for piece in cut(data, p["seal_splits"]):
            body_parts += sealer.feed(piece)
    last, env_bytes = sealer.finish()
    body = b"".join([*body_parts, last])
    assert all(len(c) == p["chunk"] + TAG for c in body_parts)

    env = parse_envelope(env_bytes)
    env.verify_sender(sender_entry(sender, key))
    assert env.routing.urgency == p["urgency"]
    assert (
        env.body_info.size
        == len(body)
        == ciphertext_size(sum(len(f[2]) for f in p["files"]), p["chunk"])
    )
    verifier = BodyVerifier(env.body_info)
    verifier.feed(body)
    verifier.finish()
    for r in p["to"]:
        opener = Opener(env, organ=r.organ, key=enc_key(r.organ, r.key.alg != "x25519"))
        files = read_all(opener, body, p["open_splits"])
        assert files == [f[2] for f in p["files"]]
        meta = opener.metadata
        assert meta.subject == p["subject"]  # NFD in, NFC out
        assert meta.signer == "Nguyễn Văn An"
        assert meta.place == "Hà Nội"
        assert [fi.name for fi in meta.files] == [nfc(f[0]) for f in p["files"]]
        assert [fi.media_type for fi in meta.files] == [f[1] for f in p["files"]]
        assert [fi.sha256 for fi in meta.files] == [
            hashlib.sha256(f[2]).digest() for f in p["files"]
        ]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 3 * CHUNK_MIN + 5),
    st.sampled_from([CHUNK_MIN, 128 * KIB]),
)
def test_ciphertext_size_and_chunk_count_agree(pt_size: int, chunk: int) -> None:
    ct = ciphertext_size(pt_size, chunk)
    n = chunk_count(ct, chunk)
    assert ct - TAG * n == pt_size
    assert n == max(1, -(-pt_size // chunk))


# --- the opener and the verifier on a tampered body ------------------------------------


def test_flipped_byte_in_body() -> None:
    pkt = standard()
    for pos in (0, 70_000, len(pkt.body) - 1):  # first, middle and last chunk
        body = bytearray(pkt.body)
        body[pos] ^= 0x01
        assert _code(open_with, pkt.env, bytes(body)) == "chunk_tag_invalid"
        verifier = BodyVerifier(pkt.parsed.body_info)
        verifier.feed(body)
        assert _code(verifier.finish) == "body_digest_mismatch"


def test_truncated_body() -> None:
    pkt = standard()
    chunks = pkt.chunks()
    for body in (b"".join(chunks[:-1]), pkt.body[:-1], b""):
        assert _code(open_with, pkt.env, body) == "truncated_body"
        verifier = BodyVerifier(pkt.parsed.body_info)
        verifier.feed(body)
        assert _code(verifier.finish) == "truncated_body"


def test_reordered_chunks() -> None:
    pkt = standard()
    c = pkt.chunks()
    assert len(c) == 3
    assert _code(open_with, pkt.env, c[1] + c[0] + c[2]) == "chunk_tag_invalid"
    # The last chunk moved forward: its flag and counter no longer match.
    full = c[0]
    assert _code(open_with, pkt.env, full + full + c[2]) == "chunk_tag_invalid"


def test_last_chunk_flag_is_checked() -> None:
    """A body cut at a chunk boundary cannot pass for complete, even when a dishonest
    sender's envelope declares the shorter size: the final chunk's flag is missing."""
    data = blob(2 * CHUNK_MIN + 1, 3)
    pkt = seal(files=[("a.pdf", "application/pdf", data)], packet_id=PACKET_ID, cek=CEK)
    c = pkt.chunks()
    assert len(c) == 3
    cut = c[0] + c[1]
    kept = data[: 2 * CHUNK_MIN]
    info = FileInfo("a.pdf", "application/pdf", len(kept), hashlib.sha256(kept).digest())
    meta = replace(metadata(), files=(info,))

    def lie(b: dict[str, Any]) -> None:
        b["body"].update(size=len(cut), sha256=hashlib.sha256(cut).digest())
        reseal_meta(b, meta)

    env = resign(pkt, lie)
    parse_envelope(env).verify_sender(pkt.entry())
    assert _code(open_with, env, cut) == "chunk_tag_invalid"


def test_extended_body() -> None:
    pkt = standard()
    for extra in (b"\x00", pkt.chunks()[0]):
        assert _code(open_with, pkt.env, pkt.body + extra) == "body_extended"
        verifier = BodyVerifier(pkt.parsed.body_info)
        assert _code(verifier.feed, pkt.body + extra) == "body_extended"
    # Fed in pieces: the byte after the end is refused as it arrives.
    opener = opener_for(pkt.env)
    opener.feed(pkt.body)
    assert _code(opener.feed, b"\x00") == "body_extended"


def test_body_size_not_a_ciphertext_size() -> None:
    pkt = standard()
    chunk = CHUNK_MIN
    for size in (0, 15, chunk + TAG + 5, 2 * (chunk + TAG) + TAG):
        assert _code(chunk_count, size, chunk) == "body_size_mismatch"
        env = resign(pkt, lambda b: b["body"].update(size=size))  # noqa: B023 - called now
        assert _code(parse_envelope, env) == "body_size_mismatch"
    assert chunk_count(TAG, chunk) == 1
    assert chunk_count(chunk + TAG, chunk) == 1
    assert chunk_count(chunk + TAG + TAG + 1, chunk) == 2


def test_opener_refuses_use_after_finish() -> None:
    pkt = standard()
    opener = opener_for(pkt.env)
    read_all(opener, pkt.body)
    with pytest.raises(LocalError):
        opener.feed(b"")
    with pytest.raises(LocalError):
        opener.finish()


# --- recipients ---------------------------------------------------------------------------


def test_recipient_not_addressed() -> None:
    pkt = standard()
    env = pkt.parsed
    assert _code(env.stanza, OTHER_ORGAN) == "recipient_not_addressed"
    assert (
        _code(Opener, env, organ="CB-KHAC", key=enc_key("CB-KHAC", False))
        == "recipient_not_addressed"
    )


def test_wrong_recipient_key() -> None:
    """The organ is addressed, but to another of its keys (a rotated one, say)."""
    env = standard().parsed
    assert (
        _code(Opener, env, organ=CLASSIC_TO, key=enc_key(CLASSIC_TO, True))
        == "recipient_not_addressed"
    )
    assert (
        _code(Opener, env, organ=CLASSIC_TO, key=enc_key(HYBRID_TO, True))
        == "recipient_not_addressed"
    )


# --- the envelope: tampering and malicious senders ---------------------------------------


def _flip_inside(data: bytes, needle: bytes, offset: int = 0) -> bytes:
    pos = data.index(needle) + offset
    out = bytearray(data)
    out[pos] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("hybrid", [False, True], ids=["ed25519", "hybrid"])
def test_flipped_byte_in_envelope(hybrid: bool) -> None:
    pkt = hybrid_standard() if hybrid else standard()
    env = pkt.parsed
    stanza = env.recipients[0]
    sha = env.body_info.sha256
    # Bytes inside the signed body's byte strings: the structure stays valid.
    for needle in (env.commitment, stanza.wrapped, env.meta_ct, sha, env.packet_id[8:]):
        tampered = _flip_inside(pkt.env, needle, len(needle) // 2)
        assert _code(parse_envelope(tampered).verify_sender, pkt.entry()) == "signature_invalid"
    # And inside each signature.
    for sig in env.signatures.values():
        tampered = _flip_inside(pkt.env, sig, 10)
        assert _code(parse_envelope(tampered).verify_sender, pkt.entry()) == "signature_invalid"


def test_corrupted_wrapped_key() -> None:
    pkt = standard()

    def corrupt(b: dict[str, Any]) -> None:
        for stanza in b["to"]:
            w = bytearray(stanza["wrap"])
            w[-1] ^= 0x01
            stanza["wrap"] = bytes(w)

    env = resign(pkt, corrupt)
    parse_envelope(env).verify_sender(pkt.entry())  # validly signed
    assert _code(opener_for, env) == "key_unwrap_failed"
    assert _code(opener_for, env, HYBRID_TO, True) == "key_unwrap_failed"


def test_wrapped_key_moved_to_another_stanza() -> None:
    """HPKE info binds organ and key: a stanza's wrap copied from another recipient fails."""
    same_alg = seal(to=[recipient(CLASSIC_TO, False), recipient(OTHER_ORGAN, False)])
    classic_kid = enc_key(CLASSIC_TO, False).kid

    def swap(b: dict[str, Any]) -> None:
        b["to"][0]["wrap"], b["to"][1]["wrap"] = b["to"][1]["wrap"], b["to"][0]["wrap"]

    env = resign(same_alg, swap)
    assert parse_envelope(env).stanza(CLASSIC_TO).kid == classic_kid
    assert _code(opener_for, env) == "key_unwrap_failed"


def test_wrong_cek_commitment() -> None:
    pkt = standard()
    env = resign(pkt, lambda b: b.update(commit=bytes(32)))
    parse_envelope(env).verify_sender(pkt.entry())
    assert _code(opener_for, env) == "cek_commitment_mismatch"


def test_different_ceks_for_different_recipients_are_caught() -> None:
    """The attack the commitment exists for: each recipient gets its own CEK."""
    pkt = standard()
    other_cek = bytes(range(32, 64))
    pid = PACKET_ID

    def rewrap(b: dict[str, Any]) -> None:
        for stanza in b["to"]:
            if stanza["organ"] == HYBRID_TO:
                pub = enc_key(HYBRID_TO, True).public_key()
                stanza["wrap"] = pub.wrap(other_cek, wrap_info(pid, HYBRID_TO, pub.kid))

    env = resign(pkt, rewrap)
    open_with(env, pkt.body)  # the honest recipient is unaffected
    assert _code(opener_for, env, HYBRID_TO, True) == "cek_commitment_mismatch"


def test_corrupted_metadata() -> None:
    pkt = standard()

    def corrupt(b: dict[str, Any]) -> None:
        m = bytearray(b["meta"])
        m[5] ^= 0x01
        b["meta"] = bytes(m)

    env = resign(pkt, corrupt)
    parse_envelope(env).verify_sender(pkt.entry())
    assert _code(opener_for, env) == "metadata_tag_invalid"
    # Metadata of another packet under the same CEK: the packet id is its associated data.
    other = seal(packet_id=new_packet_id(CREATED * 1000 + 1), cek=CEK)
    other_meta = other.parsed.meta_ct
    env = resign(pkt, lambda b: b.update(meta=other_meta))
    assert _code(opener_for, env) == "metadata_tag_invalid"


def test_lying_body_digest() -> None:
    """Every chunk opens, then the declared digest fails: the file must not be released."""
    pkt = standard()
    env = resign(pkt, lambda b: b["body"].update(sha256=bytes(32)))
    parse_envelope(env).verify_sender(pkt.entry())
    opener = opener_for(env)
    pieces = opener.feed(pkt.body)
    assert sum(len(p) for _, p in pieces) > 0  # the chunks before the last did open
    assert _code(opener.finish) == "body_digest_mismatch"


def _lying_files(change: Callable[[list[FileInfo]], None]) -> bytes:
    """An envelope whose encrypted metadata lies about the files (re-sealed metadata)."""
    pkt = standard()
    opener = opener_for(pkt.env)
    files = list(opener.metadata.files)
    change(files)
    meta = replace(opener.metadata, files=tuple(files))
    return resign(pkt, lambda b: reseal_meta(b, meta))


def test_metadata_reseal_helper_is_faithful() -> None:
    """Re-sealing the true metadata gives a packet that opens: the lies below are the cause."""
    env = _lying_files(lambda files: None)
    open_with(env, standard().body)


def test_lying_file_digest() -> None:
    def wrong_digest(files: list[FileInfo]) -> None:
        files[2] = replace(files[2], sha256=hashlib.sha256(b"other").digest())

    assert _code(open_with, _lying_files(wrong_digest), standard().body) == "file_digest_mismatch"


def test_lying_file_sizes_that_add_up() -> None:
    def shift(files: list[FileInfo]) -> None:
        files[0] = replace(files[0], size=files[0].size - 1)
        files[2] = replace(files[2], size=files[2].size + 1)

    assert _code(open_with, _lying_files(shift), standard().body) == "file_digest_mismatch"


def test_lying_file_sizes_that_do_not_add_up() -> None:
    def grow(files: list[FileInfo]) -> None:
        files[2] = replace(files[2], size=files[2].size + 1)

    env = _lying_files(grow)
    assert _code(opener_for, env) == "file_digest_mismatch"  # before any chunk is read

    def drop(files: list[FileInfo]) -> None:
        del files[2]

    assert _code(opener_for, _lying_files(drop)) == "file_digest_mismatch"


def test_lying_empty_file_digest() -> None:
    def wrong_empty(files: list[FileInfo]) -> None:
        files[1] = replace(files[1], sha256=hashlib.sha256(b"x").digest())

    assert _code(open_with, _lying_files(wrong_empty), standard().body) == "file_digest_mismatch"

    def leading_empty(files: list[FileInfo]) -> None:
        files.insert(0, FileInfo("trống.txt", "text/plain", 0, bytes(32)))

    assert _code(opener_for, _lying_files(leading_empty)) == "file_digest_mismatch"


def test_invalid_metadata_behind_a_valid_tag() -> None:
    """Metadata that decrypts but breaks the format: the strict parser still refuses it."""
    pkt = standard()

    def nfd_name(b: dict[str, Any]) -> None:
        keys = _derive(CEK, b["id"])
        meta = opener_for(pkt.env).metadata.to_cbor()
        meta["files"][0]["name"] = nfd(meta["files"][0]["name"])
        b["meta"] = keys.meta.encrypt(_META_NONCE, encode(meta), b["id"])

    assert _code(opener_for, resign(pkt, nfd_name)) == "text_invalid"

    def path_name(b: dict[str, Any]) -> None:
        keys = _derive(CEK, b["id"])
        meta = opener_for(pkt.env).metadata.to_cbor()
        meta["files"][0]["name"] = "../../etc/passwd"
        b["meta"] = keys.meta.encrypt(_META_NONCE, encode(meta), b["id"])

    assert _code(opener_for, resign(pkt, path_name)) == "field_invalid"

    def not_cbor(b: dict[str, Any]) -> None:
        b["meta"] = _derive(CEK, b["id"]).meta.encrypt(_META_NONCE, b"\xff", b["id"])

    assert _code(opener_for, resign(pkt, not_cbor)) == "cbor_malformed"


def test_signature_by_another_organ() -> None:
    """Organ B's key signs an envelope that claims to come from A."""
    b_key = signing_key(OTHER_ORGAN)
    a_entry = sender_entry(SENDER, signing_key(SENDER))
    b_entry = sender_entry(OTHER_ORGAN, b_key)
    # B seals in A's name: the envelope names B's key id, which A's entry does not list.
    env, _ = seal_packet(
        sender=SENDER,
        signing_key=b_key,
        recipients=[recipient(CLASSIC_TO, False)],
        metadata=metadata(),
        files=FILES[:1],
        created_at=CREATED,
    )
    parsed = parse_envelope(env)
    assert parsed.sender == SENDER
    assert _code(parsed.verify_sender, a_entry) == "key_unknown"
    assert _code(parsed.verify_sender, b_entry) == "organ_mismatch"
    # B names A's key id but can only sign with its own key.
    a_kid = signing_key(SENDER).kid
    env = resign(standard(), lambda b: b["from"].update(kid=a_kid), key=b_key)
    assert _code(parse_envelope(env).verify_sender, a_entry) == "signature_invalid"


def test_sender_key_validity() -> None:
    pkt = standard()
    env = pkt.parsed
    env.verify_sender(pkt.entry())
    env.verify_sender(pkt.entry(), at=CREATED + 10)
    assert _code(env.verify_sender, pkt.entry(not_before=CREATED + 1)) == "key_not_yet_valid"
    assert _code(env.verify_sender, pkt.entry(not_after=CREATED)) == "key_expired"
    assert _code(env.verify_sender, pkt.entry(revoked_at=CREATED)) == "key_revoked"
    env.verify_sender(pkt.entry(revoked_at=CREATED + 1))
    # The hub checks at submission time: a key revoked since creation is refused then.
    assert (
        _code(env.verify_sender, pkt.entry(revoked_at=CREATED + 5), at=CREATED + 5) == "key_revoked"
    )
    assert _code(env.verify_sender, pkt.entry(valid_until=CREATED)) == "organ_not_valid"
    assert _code(env.verify_sender, pkt.entry(valid_from=CREATED + 1)) == "organ_not_valid"


@pytest.mark.parametrize("drop", ["mldsa65", "ed25519"])
def test_hybrid_sender_signature_removed(drop: str) -> None:
    pkt = hybrid_standard()
    container = signed.parse(pkt.env, max_size=1 << 22, where="envelope")
    sigs = {k: v for k, v in container.signatures.items() if k != drop}
    stripped = encode({"body": container.body, "sig": sigs})
    assert _code(parse_envelope(stripped).verify_sender, pkt.entry()) == "hybrid_signature_missing"


def test_classic_sender_with_an_extra_signature() -> None:
    pkt = standard()
    container = signed.parse(pkt.env, max_size=1 << 22, where="envelope")
    ml = signing_key(HYBRID_SENDER, True).sign(signed.CTX_ENVELOPE, container.body)["mldsa65"]
    extra = encode({"body": container.body, "sig": {**container.signatures, "mldsa65": ml}})
    assert _code(parse_envelope(extra).verify_sender, pkt.entry()) == "signature_unexpected"


def test_envelope_signature_replayed_from_another_context() -> None:
    pkt = standard()
    container = signed.parse(pkt.env, max_size=1 << 22, where="envelope")
    receipt_signed = signed.sign(pkt.key, signed.CTX_RECEIPT, container.body)
    assert _code(parse_envelope(receipt_signed).verify_sender, pkt.entry()) == "signature_invalid"


# --- the envelope: format checks (validly signed, so only the parser stands guard) -------


def _parse_code(mutate: Callable[[dict[str, Any]], None]) -> str:
    return _code(parse_envelope, resign(standard(), mutate))


def test_malformed_cbor() -> None:
    pkt = standard()
    assert _code(parse_envelope, pkt.env[:-1]) == "cbor_malformed"
    assert _code(parse_envelope, pkt.env + b"\x00") == "cbor_malformed"
    assert _code(parse_envelope, b"") == "cbor_malformed"
    assert _code(parse_envelope, pkt.env, max_size=len(pkt.env) - 1) == "cbor_too_large"
    not_cbor = signed.sign(pkt.key, signed.CTX_ENVELOPE, b"\xa1\x61")
    assert _code(parse_envelope, not_cbor) == "cbor_malformed"
    assert _code(parse_envelope, signed.sign(pkt.key, signed.CTX_ENVELOPE, b"\x01")) == (
        "field_invalid"
    )


def test_unknown_version() -> None:
    assert _parse_code(lambda b: b.update(v=2)) == "version_unsupported"
    assert _parse_code(lambda b: b.update(v=0)) == "version_unsupported"


def test_unsorted_recipients() -> None:
    assert _parse_code(lambda b: b["to"].reverse()) == "cbor_not_canonical"


def test_duplicate_recipients() -> None:
    assert _parse_code(lambda b: b["to"].append(b["to"][-1])) == "recipient_duplicate"
    assert _parse_code(lambda b: b["to"].insert(0, b["to"][0])) == "recipient_duplicate"


def test_no_recipients() -> None:
    assert _parse_code(lambda b: b.update(to=[])) == "field_invalid"


def test_bad_packet_id() -> None:
    uuid4 = bytes.fromhex("9f3b2c1d4e5f4a6b8c7d9e0f1a2b3c4d")
    assert _parse_code(lambda b: b.update(id=uuid4)) == "packet_id_invalid"
    assert _parse_code(lambda b: b.update(id=PACKET_ID[:15])) == "packet_id_invalid"
    wrong_variant = bytearray(PACKET_ID)
    wrong_variant[8] = 0xC0 | (wrong_variant[8] & 0x3F)
    assert _parse_code(lambda b: b.update(id=bytes(wrong_variant))) == "packet_id_invalid"
    assert _code(check_packet_id, uuid4) == "packet_id_invalid"
    assert check_packet_id(new_packet_id()) != check_packet_id(new_packet_id())


@pytest.mark.parametrize("chunk", [0, 1, CHUNK_MIN // 2, CHUNK_MIN + 1, 100_000, 2 * CHUNK_MAX])
def test_bad_chunk_size(chunk: int) -> None:
    assert _parse_code(lambda b: b["body"].update(chunk=chunk)) == "chunk_size_invalid"


def test_reference_on_a_classified_packet() -> None:
    ref = Reference("NQ", "05", "NQ/TU", "2025-09-30").to_cbor()
    assert _parse_code(lambda b: b["route"].update(secrecy=1, ref=ref)) == "routing_invalid"
    # Unclassified with a reference is fine.
    env = resign(standard(), lambda b: b["route"].update(ref=ref))
    assert parse_envelope(env).routing.reference == Reference("NQ", "05", "NQ/TU", "2025-09-30")


def test_recall_without_target() -> None:
    assert _parse_code(lambda b: b.update(kind="recall")) == "routing_invalid"
    assert _parse_code(lambda b: b.update(kind="replace")) == "routing_invalid"
    # And a document that names a target.
    assert _parse_code(lambda b: b["route"].update(target=PACKET_ID)) == "routing_invalid"


def test_recall_with_target() -> None:
    target = standard().parsed.packet_id
    pkt = seal(kind="recall", routing=Routing(target=target), files=[])
    env = pkt.parsed
    env.verify_sender(pkt.entry())
    assert env.kind == "recall"
    assert env.routing.target == target


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda b: b.update(extra=1), "field_unknown"),
        (lambda b: b["from"].update(extra=1), "field_unknown"),
        (lambda b: b["to"][0].update(extra=1), "field_unknown"),
        (lambda b: b["route"].update(extra=1), "field_unknown"),
        (lambda b: b["body"].update(extra=1), "field_unknown"),
        (lambda b: b.pop("commit"), "field_missing"),
        (lambda b: b.pop("meta"), "field_missing"),
        (lambda b: b["body"].pop("sha256"), "field_missing"),
        (lambda b: b.update(kind="memo"), "field_invalid"),
        (lambda b: b.update(commit=bytes(31)), "field_invalid"),
        (lambda b: b.update(created=-1), "field_invalid"),
        (lambda b: b["from"].update(kid=bytes(31)), "field_invalid"),
        (lambda b: b["from"].update(organ="Tỉnh ủy"), "organ_code_invalid"),
        (lambda b: b["to"][0].update(organ="a b"), "organ_code_invalid"),
        (lambda b: b["to"][0].update(wrap=bytes(2049)), "field_invalid"),
        (lambda b: b["body"].update(suite="chacha20poly1305"), "field_invalid"),
        (lambda b: b["body"].update(sha256=bytes(33)), "field_invalid"),
        (lambda b: b["route"].update(urgency=5), "field_invalid"),
        (lambda b: b["route"].update(secrecy=4), "field_invalid"),
        (lambda b: b["route"].update(due="30/09/2025"), "field_invalid"),
        (lambda b: b["route"].update(reply_to=bytes(15)), "field_invalid"),
        (lambda b: b.update(route=[]), "field_invalid"),
    ],
)
def test_envelope_format_errors(mutate: Callable[[dict[str, Any]], None], code: str) -> None:
    assert _parse_code(mutate) == code


# --- the sealer refuses what no reader would accept ------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sender": "Tỉnh ủy"},
        {"recipients": []},
        {"recipients": [recipient(CLASSIC_TO, False), recipient(CLASSIC_TO, True)]},
        {"recipients": [Recipient("a b", enc_key(CLASSIC_TO, False).public_key())]},
        {"chunk_size": 100_000},
        {"kind": "memo"},
        {"kind": "recall"},
        {"routing": Routing(secrecy=2, reference=Reference("CV"))},
        {"routing": Routing(urgency=5)},
        {"routing": Routing(due="30/9/2025")},
        {"routing": Routing(reference=Reference(nfd("Tờ trình")))},
        {"routing": Routing(reference=Reference("CV", date="2025-9-30"))},
        {"routing": Routing(in_reply_to=b"\x00" * 15)},
        {"metadata": DocumentMetadata(subject="Công văn\rsố 5")},
        {"metadata": DocumentMetadata(subject="x", doc_type="X" * 17)},
        {"metadata": DocumentMetadata(subject="x", issued="30/09/2025")},
        {"packet_id": bytes.fromhex("9f3b2c1d4e5f4a6b8c7d9e0f1a2b3c4d")},
        {"cek": b"\x00" * 16},
        {"created_at": -1},
    ],
)
def test_sealer_refuses_bad_input(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "sender": SENDER,
        "signing_key": signing_key(SENDER),
        "recipients": [recipient(CLASSIC_TO, False)],
        "metadata": metadata(),
        **kwargs,
    }
    with pytest.raises(LocalError):
        Sealer(**args)


def test_sealer_refuses_bad_files() -> None:
    sealer = Sealer(
        sender=SENDER,
        signing_key=signing_key(SENDER),
        recipients=[recipient(CLASSIC_TO, False)],
        metadata=metadata(),
    )
    with pytest.raises(LocalError):
        sealer.feed(b"x")  # no file started
    for name in ("", ".", "..", "a/b.pdf", "a\\b.pdf", "a\x00b", "x" * 256):
        with pytest.raises(LocalError):
            sealer.add_file(name)
    for media in (nfd("ứng dụng/pdf"), "application/pdf\n", "x" * 128):
        with pytest.raises(LocalError):
            sealer.add_file("a.pdf", media)
    sealer.add_file(nfd("Báo cáo quý III.pdf"))
    sealer.feed(b"x")
    sealer.finish()
    with pytest.raises(LocalError):
        sealer.finish()
    with pytest.raises(LocalError):
        sealer.add_file("b.pdf")


def test_check_file_name() -> None:
    assert check_file_name("Báo cáo quý III.pdf") == "Báo cáo quý III.pdf"
    assert _code(check_file_name, nfd("Báo cáo quý III.pdf")) == "text_invalid"
    assert _code(check_file_name, "..") == "field_invalid"


# --- bounded memory -----------------------------------------------------------------------

STREAM = 64 * MIB
FEED = 1 * MIB


def _plaintext() -> Iterator[bytes]:
    block = blob(FEED, 64)
    for i in range(STREAM // FEED):
        yield i.to_bytes(8, "big") + block[8:]


@pytest.mark.parametrize("chunk", [CHUNK_MIN, CHUNK_MAX])
def test_memory_stays_bounded(chunk: int) -> None:
    """A 64 MiB stream in 1 MiB pieces: neither side ever buffers more than chunk + feed."""
    bound = chunk + TAG + FEED
    to = [recipient(CLASSIC_TO, False)]
    pid = new_packet_id(CREATED * 1000)

    def sealer() -> Sealer:
        s = Sealer(
            sender=SENDER,
            signing_key=signing_key(SENDER),
            recipients=to,
            metadata=metadata(),
            chunk_size=chunk,
            packet_id=pid,
            cek=CEK,
            created_at=CREATED,
        )
        s.add_file("Tài liệu lớn.bin")
        return s

    # First pass: seal, keeping only the body digest, to learn the envelope.
    first = sealer()
    digest = hashlib.sha256()
    for piece in _plaintext():
        for ct in first.feed(piece):
            digest.update(ct)
        assert len(first._buf) <= bound
    last, env_bytes = first.finish()
    digest.update(last)
    env = parse_envelope(env_bytes)
    assert env.body_info.sha256 == digest.digest()
    assert env.body_info.chunks == -(-STREAM // chunk)

    # Second pass: the same CEK and packet id give the same body, streamed straight into
    # the opener in 1 MiB pieces.  Nothing holds the whole body.
    second = sealer()
    opener = Opener(env, organ=CLASSIC_TO, key=enc_key(CLASSIC_TO, False))
    pending = bytearray()
    out_hash = hashlib.sha256()
    opened = 0

    def feed_opener(data: bytes) -> None:
        nonlocal opened
        for _, piece in opener.feed(data):
            out_hash.update(piece)
            opened += len(piece)
        assert len(opener._buf) <= bound

    for piece in _plaintext():
        for ct in second.feed(piece):
            pending += ct
            while len(pending) >= FEED:
                feed_opener(bytes(pending[:FEED]))
                del pending[:FEED]
        assert len(second._buf) <= bound
    last, _ = second.finish()
    pending += last
    while pending:
        feed_opener(bytes(pending[:FEED]))
        del pending[:FEED]
    for _, piece in opener.finish():
        out_hash.update(piece)
        opened += len(piece)
    assert opened == STREAM
    assert out_hash.digest() == opener.metadata.files[0].sha256
