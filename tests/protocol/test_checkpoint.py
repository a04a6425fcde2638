"""Tests of protocol.checkpoint: C2SP signed notes, checkpoints, witness cosignatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol.checkpoint import (
    MAX_NOTE_SIZE,
    MAX_SIGNATURES,
    Checkpoint,
    CosignatureSigner,
    CosignatureVerifier,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    add_cosignature,
    check_consistent,
    open_checkpoint,
    parse_note,
    sign_checkpoint,
    sign_note,
    verify_cosignatures,
)
from protocol.errors import LocalError, RemoteError
from protocol.merkle import EMPTY_ROOT, MemoryHashStore, consistency_proof, leaf_hash, tree_hash

ORIGIN = "hub.lienthong.example/audit"


def _outcome(call: object, *args: object) -> str | None:
    """Run a call; return its RemoteError code, or None if it succeeded."""
    assert callable(call)
    try:
        call(*args)
    except RemoteError as exc:
        return exc.code
    return None


def _code(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(RemoteError) as info:
        call(*args, **kwargs)
    return info.value.code


LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
OTHER_LOG = NoteSigner(ORIGIN, Ed25519PrivateKey.from_private_bytes(b"\x02" * 32))
WITNESSES = [
    CosignatureSigner(
        f"witness.example/w{i}", Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)
    )
    for i in range(10, 13)
]
ROOT = hashlib.sha256(b"some root").digest()
CP = Checkpoint(ORIGIN, 12345, ROOT)


# --- published vectors --------------------------------------------------------------------

# golang.org/x/mod/sumdb/note package documentation (signed-note's reference implementation).
NEUMANN_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
NEUMANN_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
NEUMANN_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
NEUMANN_NOTE = (
    NEUMANN_TEXT
    + b"\n"
    + "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    "ngotpRZb6KE6RyyBwJnAM=\n".encode()
)

# The examples of c2sp.org/tlog-checkpoint and c2sp.org/tlog-cosignature.
SPEC_COSIGNED = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcy"
    "v2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2"
    "oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
).encode()


def test_signed_note_vector_byte_for_byte() -> None:
    signer = NoteSigner.from_skey(NEUMANN_SKEY)
    verifier = NoteVerifier.from_vkey(NEUMANN_VKEY)
    assert signer.key_hash.hex() == "c74f20a3" == verifier.key_hash.hex()
    assert signer.to_skey() == NEUMANN_SKEY
    assert signer.verifier().to_vkey() == NEUMANN_VKEY
    assert verifier.to_vkey() == NEUMANN_VKEY
    # Ed25519 is deterministic, so our signature must be the published one.
    assert sign_note(NEUMANN_TEXT, signer) == NEUMANN_NOTE
    note = parse_note(NEUMANN_NOTE)
    assert note.text == NEUMANN_TEXT
    assert note.encode() == NEUMANN_NOTE
    [sig] = note.signatures
    assert (sig.name, sig.key_hash.hex()) == ("PeterNeumann", "c74f20a3")
    assert verifier.verify(note.text, sig.signature)
    assert not verifier.verify(note.text + b"x\n", sig.signature)


def test_published_verifier_keys() -> None:
    # From transparency-dev/formats' note tests: a real Ed25519 note key and a real
    # witness's cosignature/v1 key; parsing recomputes and checks each key ID.
    note_vkey = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
    assert NoteVerifier.from_vkey(note_vkey).to_vkey() == note_vkey
    cosig_vkey = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
    assert CosignatureVerifier.from_vkey(cosig_vkey).to_vkey() == cosig_vkey
    # A key of one signature type is not a key of the other.
    assert _code(NoteVerifier.from_vkey, cosig_vkey) == "key_invalid"
    assert _code(CosignatureVerifier.from_vkey, note_vkey) == "key_invalid"


@pytest.mark.parametrize(
    "vkey",
    [
        "bananas.sigstore.dev+12344556",
        "rekor.sigstore.dev+12345678+THIS_IS_NOT_BASE64!",
        "rekor.sigstore.dev+12345678+AwEB",
        "TEST+NOT_A_NUMBER+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        "TEST+00000000+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",  # wrong key ID
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr7",  # non-canonical base64
        "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6AA==",  # 34 bytes
        "TE ST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        "+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        "TEST+7997405+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        "",
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    assert _code(NoteVerifier.from_vkey, vkey) == "key_invalid"


def test_bad_signer_keys() -> None:
    good = LOG.to_skey()
    assert NoteSigner.from_skey(good).key_hash == LOG.key_hash
    for skey in [
        good.removeprefix("PRIVATE+"),
        good.replace(LOG.key_hash.hex(), "00000000"),
        NEUMANN_VKEY,
        "PRIVATE+KEY+x+00000000+AQ==",
        WITNESSES[0].to_skey(),  # a cosignature key is not a note key
    ]:
        assert _code(NoteSigner.from_skey, skey) == "key_invalid"
    for name in ["", "a b", "a+b", "a\u00a0b", "a\x00b", "\ud800"]:
        with pytest.raises(LocalError):
            NoteSigner(name, Ed25519PrivateKey.generate())
    # The secret never shows in a repr.
    assert good.rsplit("+", 1)[1] not in repr(LOG)


def test_spec_example_checkpoint_and_cosignature() -> None:
    note = parse_note(SPEC_COSIGNED)
    cp = Checkpoint.parse_body(note.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert base64.b64encode(cp.root_hash) == b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    assert cp.extensions == ()
    assert cp.body() == note.text
    log_sig, witness_sig = note.signatures
    assert log_sig.name == "example.com/behind-the-sofa"
    assert len(log_sig.signature) == 64
    # The cosignature is timestamp || Ed25519 signature; the spec's example was made at
    # the time its message example shows ("time 1679315147").
    assert witness_sig.name == "witness.example.com/w1"
    assert len(witness_sig.signature) == 8 + 64
    assert int.from_bytes(witness_sig.signature[:8], "big") == 1679315147
    assert note.encode() == SPEC_COSIGNED
    # Neither key is known to us: the note is rejected for lacking the log's signature.
    assert _code(open_checkpoint, SPEC_COSIGNED, LOG.verifier()) == ("checkpoint_signature_invalid")


# --- checkpoints --------------------------------------------------------------------------


def test_sign_open_round_trip() -> None:
    note = sign_checkpoint(CP, LOG)
    assert note.startswith(CP.body() + b"\n\xe2\x80\x94 " + ORIGIN.encode() + b" ")
    assert open_checkpoint(note, LOG.verifier()) == CP
    assert open_checkpoint(note, NoteVerifier.from_vkey(LOG.verifier().to_vkey())) == CP


def test_body_format() -> None:
    cp = Checkpoint(ORIGIN, 0, EMPTY_ROOT, ("ext one", "ext two"))
    body = cp.body()
    assert body == (
        f"{ORIGIN}\n0\n{base64.b64encode(EMPTY_ROOT).decode()}\next one\next two\n".encode()
    )
    assert Checkpoint.parse_body(body) == cp
    assert open_checkpoint(sign_checkpoint(cp, LOG), LOG.verifier()) == cp


def test_checkpoint_constructor_rejects_nonsense() -> None:
    for args in [
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        (ORIGIN, -1, ROOT),
        (ORIGIN, 1 << 64, ROOT),
        (ORIGIN, 1, ROOT[:31]),
    ]:
        with pytest.raises(LocalError):
            Checkpoint(*args)
    with pytest.raises(LocalError):
        Checkpoint(ORIGIN, 1, ROOT, ("",))
    with pytest.raises(LocalError):
        Checkpoint(ORIGIN, 1, ROOT, ("\ud800",))
    with pytest.raises(LocalError):
        sign_note(b"no newline", LOG)


def test_other_signatures_are_ignored() -> None:
    note = sign_checkpoint(CP, LOG)
    # A line by an unknown key, one sharing only the log's name, one sharing only its ID.
    stranger = NoteSigner("someone.else", Ed25519PrivateKey.from_private_bytes(b"\x03" * 32))
    extra = [
        NoteSignature(stranger.name, stranger.key_hash, stranger.sign(CP.body())),
        NoteSignature(ORIGIN, b"\x00\x00\x00\x00", b"\x00" * 64),
        NoteSignature("someone.else", LOG.key_hash, b"\x00" * 64),
    ]
    parsed = parse_note(note)
    mixed = Note(parsed.text, (*extra, *parsed.signatures)).encode()
    assert open_checkpoint(mixed, LOG.verifier()) == CP


def test_forged_signature_rejected() -> None:
    # Same name, another key: its key ID differs, so there is no log signature at all.
    forged = sign_checkpoint(CP, OTHER_LOG)
    assert _code(open_checkpoint, forged, LOG.verifier()) == "checkpoint_signature_invalid"
    # Same name and key ID, another key's signature: a bad signature by the log's key.
    parsed = parse_note(forged)
    [sig] = parsed.signatures
    spoofed = Note(parsed.text, (NoteSignature(ORIGIN, LOG.key_hash, sig.signature),))
    assert _code(open_checkpoint, spoofed.encode(), LOG.verifier()) == (
        "checkpoint_signature_invalid"
    )
    # A good signature next to a bad one by the same key still rejects the note.
    good = parse_note(sign_checkpoint(CP, LOG)).signatures[0]
    both = Note(parsed.text, (good, spoofed.signatures[0])).encode()
    assert _code(open_checkpoint, both, LOG.verifier()) == "checkpoint_signature_invalid"
    # A signature of the wrong length by the log's key.
    short = Note(parsed.text, (NoteSignature(ORIGIN, LOG.key_hash, b"\x00" * 63),))
    assert _code(open_checkpoint, short.encode(), LOG.verifier()) == (
        "checkpoint_signature_invalid"
    )


def test_changed_body_rejected() -> None:
    note = sign_checkpoint(CP, LOG)
    body = CP.body()
    for i in range(len(body) - 1):  # every byte but the final newline
        changed = bytearray(note)
        changed[i] = ord("A") if changed[i] != ord("A") else ord("B")
        code = _outcome(open_checkpoint, bytes(changed), LOG.verifier())
        assert code in {"checkpoint_signature_invalid", "checkpoint_malformed"}, i
    # A well-formed change of size or root is a signature failure.
    for other in [Checkpoint(ORIGIN, 12346, ROOT), Checkpoint(ORIGIN, 12345, EMPTY_ROOT)]:
        tampered = note.replace(CP.body(), other.body())
        assert _code(open_checkpoint, tampered, LOG.verifier()) == ("checkpoint_signature_invalid")


def test_origin_must_match() -> None:
    other = Checkpoint("another.log", 1, ROOT)
    note = sign_checkpoint(other, LOG)
    assert _code(open_checkpoint, note, LOG.verifier()) == "checkpoint_malformed"
    assert open_checkpoint(note, LOG.verifier(), origin="another.log") == other


def _signed_text(text: bytes) -> bytes:
    """A note of ``text`` with a valid log signature, however malformed the text."""
    return Note(text, (NoteSignature(ORIGIN, LOG.key_hash, LOG.sign(text)),)).encode()


ROOT_B64 = base64.b64encode(ROOT)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n",
        ORIGIN.encode() + b"\n12345\n",  # two lines
        b"\n12345\n" + ROOT_B64 + b"\n",  # empty origin
        ORIGIN.encode() + b"\n012345\n" + ROOT_B64 + b"\n",  # leading zero
        ORIGIN.encode() + b"\n+12345\n" + ROOT_B64 + b"\n",
        ORIGIN.encode() + b"\n12_345\n" + ROOT_B64 + b"\n",
        ORIGIN.encode() + b"\n 12345\n" + ROOT_B64 + b"\n",
        ORIGIN.encode() + b"\n-1\n" + ROOT_B64 + b"\n",
        ORIGIN.encode() + "\n١٢٣\n".encode() + ROOT_B64 + b"\n",  # Arabic-Indic digits
        ORIGIN.encode() + b"\n18446744073709551616\n" + ROOT_B64 + b"\n",  # 2^64
        ORIGIN.encode() + b"\n" + b"9" * 5000 + b"\n" + ROOT_B64 + b"\n",
        ORIGIN.encode() + b"\n12345\n" + ROOT_B64[:-1] + b"\n",  # bad padding
        ORIGIN.encode() + b"\n12345\n" + ROOT_B64.replace(b"=", b"") + b"\n",
        ORIGIN.encode() + b"\n12345\n" + base64.b64encode(ROOT[:31]) + b"\n",
        ORIGIN.encode() + b"\n12345\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n",
        ORIGIN.encode() + b"\n12345\n" + ROOT_B64 + b"\n\n",  # empty extension line
        ORIGIN.encode() + b"\n12345\n" + ROOT_B64,  # no final newline
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    assert _code(Checkpoint.parse_body, body) == "checkpoint_malformed"
    if body.endswith(b"\n") and b"\n\n" not in body:
        assert _code(open_checkpoint, _signed_text(body), LOG.verifier()) == (
            "checkpoint_malformed"
        )


def test_root_hash_non_canonical_base64() -> None:
    # The last base64 digit of a 32-byte value carries 2 padding bits; setting them gives
    # another spelling of the same bytes, which is refused.
    b64 = base64.b64encode(b"\x00" * 32)
    assert b64.endswith(b"AA=")
    body = ORIGIN.encode() + b"\n1\n" + b64[:-2] + b"B=\n"
    assert _code(Checkpoint.parse_body, body) == "checkpoint_malformed"


def test_malformed_notes() -> None:
    note = sign_checkpoint(CP, LOG)
    text, sig_line = note.split(b"\n\n")
    cases = {
        "no blank line": text + b"\n" + sig_line,
        "no trailing newline": note[:-1],
        "nothing after blank line": text + b"\n\n",
        "bad base64": note.replace(sig_line[-10:], b"!!!!!!!!!\n"),
        "no em dash": note.replace("— ".encode(), b"- "),
        "no space after name": note.replace(ORIGIN.encode() + b" ", ORIGIN.encode() + b"\t"),
        "no signature after name": text + b"\n\n" + "— ".encode() + ORIGIN.encode() + b"\n",
        "empty name": text + b"\n\n" + "—  ".encode() + sig_line.split(b" ")[-1],
        "plus in name": text + b"\n\n" + "— a+b ".encode() + sig_line.split(b" ")[-1],
        "key ID only": text + b"\n\n" + "— x ".encode() + base64.b64encode(b"1234") + b"\n",
        "not UTF-8": note.replace(b"audit", b"aud\xfft"),
        "overlong UTF-8": note.replace(b"audit", b"aud\xc0\xafit"),
        "control character": note.replace(b"audit", b"aud\x00it"),
        "carriage return": note.replace(b"\n", b"\r\n"),
        "tab": note.replace(b"audit", b"aud\tit"),
        "empty": b"",
        "oversize": text + b"\n" + b"x" * MAX_NOTE_SIZE + b"\n\n" + sig_line,
        "too many signatures": text + b"\n\n" + sig_line * (MAX_SIGNATURES + 1),
    }
    for what, bad in cases.items():
        assert _code(open_checkpoint, bad, LOG.verifier()) == "checkpoint_malformed", what
    # The text ends at the *last* blank line, so an extra one joins the text: the log's
    # signature then no longer covers it.
    two_blank = text + b"\n\n\n" + sig_line
    assert parse_note(two_blank).text == text + b"\n\n"
    assert _code(open_checkpoint, two_blank, LOG.verifier()) == "checkpoint_signature_invalid"
    # The limit itself is accepted.
    assert open_checkpoint(text + b"\n\n" + sig_line * MAX_SIGNATURES, LOG.verifier()) == CP


@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    verifier = LOG.verifier()
    for call in (
        lambda: open_checkpoint(data, verifier),
        lambda: Checkpoint.parse_body(data),
        lambda: verify_cosignatures(data, [WITNESSES[0].verifier()], 1),
        lambda: add_cosignature(data, WITNESSES[0], 1),
    ):
        assert _outcome(call) in {
            None,
            "checkpoint_malformed",
            "checkpoint_signature_invalid",
            "cosignature_invalid",
        }


@given(st.integers(min_value=0, max_value=300), st.data())
def test_single_byte_mutations_of_a_signed_note(position: int, data: st.DataObject) -> None:
    note = bytearray(sign_checkpoint(CP, LOG))
    position %= len(note)
    value = data.draw(st.integers(min_value=0, max_value=255))
    if note[position] == value:
        return
    note[position] = value
    # Body, separator, name, key ID or signature: every byte of the note is load-bearing.
    code = _outcome(open_checkpoint, bytes(note), LOG.verifier())
    assert code in {"checkpoint_malformed", "checkpoint_signature_invalid"}


# Any character but controls and lone surrogates (which have no UTF-8 form).
LINE_CHARS = st.characters(min_codepoint=0x20, exclude_categories=["Cs"])


@given(
    st.text(alphabet=LINE_CHARS, min_size=1, max_size=40),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.binary(min_size=32, max_size=32),
    st.lists(st.text(alphabet=LINE_CHARS, min_size=1, max_size=20)),
)
def test_body_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.parse_body(cp.body()) == cp
    signer = NoteSigner("log", Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))
    assert open_checkpoint(sign_checkpoint(cp, signer), signer.verifier(), origin=origin) == cp


# --- cosignatures -------------------------------------------------------------------------


def _cosigned(*witnesses: CosignatureSigner, timestamp: int = 1_700_000_000) -> bytes:
    note = sign_checkpoint(CP, LOG)
    for w in witnesses:
        note = add_cosignature(note, w, timestamp)
    return note


def test_cosignature_format() -> None:
    w = WITNESSES[0]
    note = _cosigned(w, timestamp=1679315147)
    _, cosig = parse_note(note).signatures
    assert cosig.name == w.name
    assert (
        cosig.key_hash
        == hashlib.sha256(
            w.name.encode() + b"\n\x04" + w.verifier().public_key.public_bytes_raw()
        ).digest()[:4]
    )
    assert cosig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + CP.body()
    w.verifier().public_key.verify(cosig.signature[8:], message)  # raises if wrong
    assert w.verifier().verify(CP.body(), cosig.signature) == 1679315147
    # The log's signature is untouched and the note still opens.
    assert open_checkpoint(note, LOG.verifier()) == CP
    # Regression vector: a fixed key, checkpoint and time give these exact bytes.
    assert note.endswith(
        "— witness.example/w10 J11V+wAAAABkGFDLxt63MrF78TaUOMAm0nRU1exyThrjXQmfPESRfxzBoTXEwx2O/"
        "oBpES/cWJzS26DIfsOJlKoqq7GPnhpLAudxAg==\n".encode()
    )


def test_cosignature_vkeys_round_trip() -> None:
    for w in WITNESSES:
        vkey = w.verifier().to_vkey()
        assert base64.b64decode(vkey.split("+", 2)[2])[0] == 0x04
        assert CosignatureVerifier.from_vkey(vkey).key_hash == w.key_hash
        assert CosignatureSigner.from_skey(w.to_skey()).key_hash == w.key_hash


def test_cosignatures_k_of_n() -> None:
    verifiers = [w.verifier() for w in WITNESSES]
    note = _cosigned(WITNESSES[0], WITNESSES[2])
    assert verify_cosignatures(note, verifiers, 2) == [WITNESSES[0].name, WITNESSES[2].name]
    assert verify_cosignatures(note, verifiers, 0) == [WITNESSES[0].name, WITNESSES[2].name]
    with pytest.raises(RemoteError) as info:
        verify_cosignatures(note, verifiers, 3)
    assert info.value.code == "cosignature_invalid"
    assert "2 valid" in info.value.detail
    assert "3 of 3" in info.value.detail
    # The log's own signature and unknown witnesses do not count.
    stranger = CosignatureSigner("stranger", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    note = _cosigned(stranger)
    assert _code(verify_cosignatures, note, verifiers, 1) == "cosignature_invalid"
    assert verify_cosignatures(note, verifiers, 0) == []


def test_cosignature_replaced_not_duplicated() -> None:
    w = WITNESSES[1]
    note = add_cosignature(_cosigned(w, timestamp=100), w, 200)
    sigs = parse_note(note).signatures
    assert len(sigs) == 2
    assert sigs[1].signature[:8] == (200).to_bytes(8, "big")
    assert verify_cosignatures(note, [w.verifier()], 1) == [w.name]


def test_forged_cosignature_rejected() -> None:
    w = WITNESSES[0]
    verifiers = [v.verifier() for v in WITNESSES]
    note = _cosigned(w, WITNESSES[1])
    parsed = parse_note(note)
    log_sig, good, other = parsed.signatures

    def with_cosig(sig: bytes) -> bytes:
        return Note(parsed.text, (log_sig, NoteSignature(w.name, w.key_hash, sig), other)).encode()

    impostor = CosignatureSigner(w.name, Ed25519PrivateKey.from_private_bytes(b"\x09" * 32))
    forged = impostor.sign(parsed.text, 1_700_000_000)
    later = (1_700_000_001).to_bytes(8, "big") + good.signature[8:]  # timestamp changed
    flipped = good.signature[:-1] + bytes([good.signature[-1] ^ 1])
    huge_time = (1 << 63).to_bytes(8, "big") + good.signature[8:]
    for bad in [forged, later, flipped, huge_time, good.signature[:-1], b"\x00"]:
        assert _code(verify_cosignatures, with_cosig(bad), verifiers, 1) == ("cosignature_invalid")
    # A cosignature over another checkpoint, pasted onto this one.
    other_cp = add_cosignature(sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), LOG), w, 5)
    pasted = parse_note(other_cp).signatures[1].signature
    assert _code(verify_cosignatures, with_cosig(pasted), verifiers, 1) == "cosignature_invalid"
    # A plain note signature (type 0x01) by the witness's key is not a cosignature.
    as_note_key = NoteSigner(w.name, Ed25519PrivateKey.from_private_bytes(bytes([10]) * 32))
    plain = NoteSignature(w.name, w.key_hash, as_note_key.sign(parsed.text))
    assert _code(
        verify_cosignatures, Note(parsed.text, (log_sig, plain)).encode(), verifiers, 1
    ) == ("cosignature_invalid")


def test_cosignature_argument_checks() -> None:
    note = _cosigned(WITNESSES[0])
    v = WITNESSES[0].verifier()
    with pytest.raises(LocalError):
        verify_cosignatures(note, [v, v], 1)
    with pytest.raises(LocalError):
        verify_cosignatures(note, [v], 2)
    with pytest.raises(LocalError):
        add_cosignature(note, WITNESSES[1], -1)
    with pytest.raises(LocalError):
        add_cosignature(note, WITNESSES[1], 1 << 63)
    assert _code(add_cosignature, b"not a note", WITNESSES[0], 1) == "checkpoint_malformed"
    bad_body = _signed_text(b"just one line\n")
    assert _code(add_cosignature, bad_body, WITNESSES[0], 1) == "checkpoint_malformed"


# --- consistency between checkpoints ------------------------------------------------------


@pytest.fixture(scope="module")
def store() -> MemoryHashStore:
    return MemoryHashStore(leaf_hash(b"entry %d" % i) for i in range(50))


def _cp_at(store: MemoryHashStore, size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, tree_hash(size, store))


def test_consistent_checkpoints(store: MemoryHashStore) -> None:
    for old, new in [(0, 50), (1, 50), (17, 32), (32, 50), (50, 50), (0, 0)]:
        proof = consistency_proof(old, new, store)
        check_consistent(_cp_at(store, old), _cp_at(store, new), proof)


def test_fork_detected(store: MemoryHashStore) -> None:
    old, new = _cp_at(store, 20), _cp_at(store, 40)
    proof = consistency_proof(20, 40, store)
    # Two checkpoints of the same size with different roots.
    fork = Checkpoint(ORIGIN, 40, hashlib.sha256(b"other history").digest())
    assert _code(check_consistent, new, fork, []) == "checkpoint_inconsistent"
    assert _code(check_consistent, old, fork, proof) == "checkpoint_inconsistent"
    # A tree that shrank.
    assert _code(check_consistent, new, old, proof) == "checkpoint_inconsistent"
    # A proof that does not verify, or is missing.
    bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    assert _code(check_consistent, old, new, bad) == "checkpoint_inconsistent"
    assert _code(check_consistent, old, new, []) == "checkpoint_inconsistent"
    assert _code(check_consistent, old, new, [b"x"]) == "checkpoint_inconsistent"
    # Checkpoints of another log.
    other = Checkpoint("other.log", 40, new.root_hash)
    assert _code(check_consistent, old, other, proof) == "checkpoint_inconsistent"
