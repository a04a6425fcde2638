"""Sealed document packets: the envelope, the encrypted body, and the sans-IO sealer/opener.

A packet is a small signed **envelope** and an encrypted **body**.  The body is encrypted
once, whatever the number of recipients:

* a random 32-byte content key (CEK) per packet; HKDF-SHA256 (salt: a label and the packet
  id) derives from it the body key, the metadata key and a *commitment* that goes in the
  signed envelope.  AES-GCM is not key-committing, so without the commitment a malicious
  sender could wrap different CEKs for different recipients that open one ciphertext to
  different documents; with it every recipient provably opens the same plaintext;
* the plaintext is the files one after another; the encrypted metadata lists each file's
  name (NFC), media type, size and SHA-256 in order;
* the body is a STREAM of AES-256-GCM chunks, as in age's payload format: every chunk but
  the last holds exactly ``chunk`` plaintext bytes, nonce = 88-bit big-endian counter ||
  last-chunk flag byte.  Reordering, truncation and extension are all caught, and memory is
  one chunk whatever the size.

The envelope is deterministic CBOR inside a :mod:`protocol.signed` container.  The hub
checks everything it routes on -- sender, signature, recipients, routing fields, body size
and SHA-256 -- without any key that opens the content (:class:`BodyVerifier`).

Sans-IO: :class:`Sealer` and :class:`Opener` are fed bytes and hand bytes back.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import signed
from .codec import Fields, check_text, decode, encode, nfc, omit_none
from .directory import ORGAN_CODE_MAX, DirectoryEntry, check_organ_code
from .errors import LocalError, RemoteError
from .keys import KID_SIZE, EncryptionPrivateKey, EncryptionPublicKey, SigningPrivateKey

VERSION: Final = 1
KINDS: Final = ("document", "recall", "update", "replace")
SUITE: Final = "aes256gcm-stream-v1"
CHUNK_MIN: Final = 64 * 1024
CHUNK_MAX: Final = 1024 * 1024
DEFAULT_CHUNK: Final = 64 * 1024
TAG: Final = 16
CEK_SIZE: Final = 32
ENVELOPE_MAX: Final = 4 * 1024 * 1024
MAX_RECIPIENTS: Final = 2000
MAX_FILES: Final = 1000
BODY_MAX: Final = 1 << 50

URGENCY_MAX: Final = 4
SECRECY_MAX: Final = 3
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_META_NONCE: Final = bytes(12)
_META_MAX: Final = 1 << 20


# --- clear routing fields and encrypted metadata -------------------------------------


def _check_date(value: str | None, name: str) -> str | None:
    if value is not None and _DATE_RE.fullmatch(value) is None:
        raise RemoteError("field_invalid", f"{name} must be a date YYYY-MM-DD")
    return value


@dataclass(frozen=True, slots=True)
class Reference:
    """Số, ký hiệu, date and type of a document: clear routing data, unclassified only."""

    doc_type: str
    number: str | None = None
    notation: str | None = None
    date: str | None = None

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "type": self.doc_type,
                "number": self.number,
                "notation": self.notation,
                "date": self.date,
            }
        )

    @classmethod
    def from_cbor(cls, value: Any) -> Reference:
        f = Fields(value, "route.ref")
        ref = cls(
            doc_type=f.text("type", max_len=16),
            number=f.opt_text("number", max_len=32),
            notation=f.opt_text("notation", max_len=64),
            date=_check_date(f.opt_text("date", max_len=10), "route.ref.date"),
        )
        f.done()
        return ref


@dataclass(frozen=True, slots=True)
class Routing:
    """What the hub routes on: urgency 0-4, declared secrecy 0-3, due date, links."""

    urgency: int = 0
    secrecy: int = 0
    due: str | None = None
    reference: Reference | None = None
    in_reply_to: bytes | None = None
    target: bytes | None = None

    def check(self, kind: str) -> None:
        if not 0 <= self.urgency <= URGENCY_MAX:
            raise RemoteError("field_invalid", "urgency must be 0-4")
        if not 0 <= self.secrecy <= SECRECY_MAX:
            raise RemoteError("field_invalid", "secrecy must be 0-3")
        if self.reference is not None and self.secrecy != 0:
            raise RemoteError(
                "routing_invalid", "a clear reference is allowed on unclassified packets only"
            )
        if (kind == "document") != (self.target is None):
            raise RemoteError(
                "routing_invalid",
                "recall, update and replace name a target packet; documents do not",
            )
        _check_date(self.due, "route.due")

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "urgency": self.urgency,
                "secrecy": self.secrecy,
                "due": self.due,
                "ref": self.reference.to_cbor() if self.reference else None,
                "reply_to": self.in_reply_to,
                "target": self.target,
            }
        )

    @classmethod
    def from_cbor(cls, value: Any) -> Routing:
        f = Fields(value, "route")
        ref = f.opt_raw("ref")
        routing = cls(
            urgency=f.integer("urgency", hi=URGENCY_MAX),
            secrecy=f.integer("secrecy", hi=SECRECY_MAX),
            due=f.opt_text("due", max_len=10),
            reference=Reference.from_cbor(ref) if ref is not None else None,
            in_reply_to=f.opt_blob("reply_to", size=16),
            target=f.opt_blob("target", size=16),
        )
        f.done()
        return routing


def check_file_name(name: str) -> str:
    """A file name is one NFC path component: no separators, no NUL, not . or .."""
    check_text(name, name="file name", max_len=255)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise RemoteError("field_invalid", "file name must be a single path component")
    return name


@dataclass(frozen=True, slots=True)
class FileInfo:
    name: str
    media_type: str
    size: int
    sha256: bytes

    def to_cbor(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "media": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_cbor(cls, value: Any) -> FileInfo:
        f = Fields(value, "meta.files[]")
        info = cls(
            name=check_file_name(f.text("name", max_len=255)),
            media_type=f.text("media", max_len=127),
            size=f.integer("size", hi=BODY_MAX),
            sha256=f.blob("sha256", size=32),
        )
        f.done()
        return info


@dataclass(frozen=True, slots=True)
class DocumentMetadata:
    """The encrypted part of the metadata: trích yếu, type, số/ký hiệu, signer, files."""

    subject: str
    doc_type: str = "CV"
    number: str | None = None
    notation: str | None = None
    signer: str | None = None
    issued: str | None = None
    place: str | None = None
    notes: str | None = None
    files: tuple[FileInfo, ...] = ()

    def normalised(self) -> DocumentMetadata:
        """NFC everywhere: clerks' systems hand us NFC and NFD alike."""

        def n(v: str | None) -> str | None:
            return None if v is None else nfc(v)

        return replace(
            self,
            subject=nfc(self.subject),
            doc_type=nfc(self.doc_type),
            number=n(self.number),
            notation=n(self.notation),
            signer=n(self.signer),
            place=n(self.place),
            notes=n(self.notes),
        )

    def to_cbor(self) -> dict[str, Any]:
        return omit_none(
            {
                "subject": self.subject,
                "type": self.doc_type,
                "number": self.number,
                "notation": self.notation,
                "signer": self.signer,
                "issued": self.issued,
                "place": self.place,
                "notes": self.notes,
                "files": [fi.to_cbor() for fi in self.files],
            }
        )

    @classmethod
    def from_cbor(cls, value: Any) -> DocumentMetadata:
        f = Fields(value, "meta")
        meta = cls(
            subject=f.text("subject", max_len=4000, multiline=True),
            doc_type=f.text("type", max_len=16),
            number=f.opt_text("number", max_len=32),
            notation=f.opt_text("notation", max_len=64),
            signer=f.opt_text("signer", max_len=256),
            issued=_check_date(f.opt_text("issued", max_len=10), "meta.issued"),
            place=f.opt_text("place", max_len=256),
            notes=f.opt_text("notes", max_len=16000, multiline=True),
            files=tuple(FileInfo.from_cbor(v) for v in f.array("files", max_items=MAX_FILES)),
        )
        f.done()
        return meta


# --- the envelope --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stanza:
    """One recipient: organ, the key the CEK is wrapped to, and the HPKE output."""

    organ: str
    kid: bytes
    wrapped: bytes


@dataclass(frozen=True, slots=True)
class BodyInfo:
    size: int
    chunk: int
    sha256: bytes
    suite: str = SUITE

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk)

    @property
    def plaintext_size(self) -> int:
        return self.size - TAG * self.chunks


def chunk_count(ct_size: int, chunk: int) -> int:
    """Number of STREAM chunks in a ciphertext of ``ct_size`` bytes, or a remote error."""
    full = chunk + TAG
    n = max(1, -(-ct_size // full))
    last = ct_size - (n - 1) * full
    if last < TAG or (last == TAG and n > 1):
        raise RemoteError(
            "body_size_mismatch", f"{ct_size} is not a valid ciphertext size for chunks of {chunk}"
        )
    return n


def ciphertext_size(pt_size: int, chunk: int) -> int:
    n = max(1, -(-pt_size // chunk))
    return pt_size + TAG * n


@dataclass(frozen=True, slots=True)
class Envelope:
    """A parsed envelope.  ``raw`` is the wire container, ``body`` the signed bytes."""

    raw: bytes
    body: bytes
    digest: bytes
    signatures: dict[str, bytes]
    packet_id: bytes
    kind: str
    sender: str
    sender_kid: bytes
    created_at: int
    recipients: tuple[Stanza, ...]
    routing: Routing
    meta_ct: bytes
    body_info: BodyInfo
    commitment: bytes
    _index: dict[str, Stanza] = field(repr=False, compare=False, default_factory=dict)

    @property
    def packet_uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.packet_id)

    def stanza(self, organ: str) -> Stanza:
        found = self._index.get(organ)
        if found is None:
            raise RemoteError(
                "recipient_not_addressed", f"{organ} is not a recipient of this packet"
            )
        return found

    def verify_sender(self, entry: DirectoryEntry, *, at: int | None = None) -> None:
        """Check the sender's directory entry, key validity and the envelope signature.

        ``at`` is when the key must be valid: the envelope's creation time by default; the
        hub passes the time of submission.
        """
        when = self.created_at if at is None else at
        if entry.organ != self.sender:
            raise RemoteError(
                "organ_mismatch", f"entry is for {entry.organ}, the sender is {self.sender}"
            )
        entry.check_valid(when)
        key = entry.signing_key(self.sender_kid, when)
        key.verify(signed.CTX_ENVELOPE, self.body, self.signatures)


def new_packet_id(now_ms: int | None = None) -> bytes:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version, random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = bytearray(os.urandom(10))
    value = bytearray(ms.to_bytes(6, "big")) + rand
    value[6] = 0x70 | (value[6] & 0x0F)
    value[8] = 0x80 | (value[8] & 0x3F)
    return bytes(value)


def check_packet_id(value: bytes) -> bytes:
    if len(value) != 16 or value[6] >> 4 != 7 or value[8] >> 6 != 2:
        raise RemoteError("packet_id_invalid")
    return value


def parse_envelope(data: bytes, *, max_size: int = ENVELOPE_MAX) -> Envelope:
    """Strictly parse an envelope container.  Verify it with :meth:`Envelope.verify_sender`."""
    container = signed.parse(data, max_size=max_size, where="envelope")
    f = Fields(decode(container.body, max_size=max_size, max_depth=5), "envelope")
    if f.integer("v") != VERSION:
        raise RemoteError("version_unsupported", "envelope version")
    packet_id = check_packet_id(f.blob("id"))
    kind = f.choice("kind", KINDS)
    sender_f = f.map("from")
    sender = check_organ_code(sender_f.text("organ", max_len=ORGAN_CODE_MAX))
    sender_kid = sender_f.blob("kid", size=KID_SIZE)
    sender_f.done()
    created = f.integer("created")
    stanzas: list[Stanza] = []
    index: dict[str, Stanza] = {}
    raw_to = f.array("to", max_items=MAX_RECIPIENTS)
    if not raw_to:
        raise RemoteError("field_invalid", "envelope.to must name at least one recipient")
    for item in raw_to:
        s = Fields(item, "envelope.to[]")
        st = Stanza(
            organ=check_organ_code(s.text("organ", max_len=ORGAN_CODE_MAX)),
            kid=s.blob("kid", size=KID_SIZE),
            wrapped=s.blob("wrap", max_size=2048),
        )
        s.done()
        if st.organ in index:
            raise RemoteError("recipient_duplicate", f"{st.organ} appears twice")
        index[st.organ] = st
        stanzas.append(st)
    if [s.organ for s in stanzas] != sorted(index):
        raise RemoteError("cbor_not_canonical", "envelope.to must be sorted by organ code")
    routing = Routing.from_cbor(f.raw("route"))
    routing.check(kind)
    meta_ct = f.blob("meta", max_size=1 << 20)
    b = f.map("body")
    body_info = BodyInfo(
        size=b.integer("size", hi=BODY_MAX),
        chunk=b.integer("chunk"),
        sha256=b.blob("sha256", size=32),
        suite=b.choice("suite", (SUITE,)),
    )
    b.done()
    _check_chunk(body_info.chunk)
    chunk_count(body_info.size, body_info.chunk)
    commitment = f.blob("commit", size=32)
    f.done()
    return Envelope(
        raw=bytes(data),
        body=container.body,
        digest=container.digest,
        signatures=container.signatures,
        packet_id=packet_id,
        kind=kind,
        sender=sender,
        sender_kid=sender_kid,
        created_at=created,
        recipients=tuple(stanzas),
        routing=routing,
        meta_ct=meta_ct,
        body_info=body_info,
        commitment=commitment,
        _index=index,
    )


def _check_chunk(chunk: int) -> None:
    if not CHUNK_MIN <= chunk <= CHUNK_MAX or chunk & (chunk - 1):
        raise RemoteError("chunk_size_invalid", f"chunk size {chunk}")


# --- key schedule --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Keys:
    body: AESGCM
    meta: AESGCM
    commitment: bytes


def _derive(cek: bytes, packet_id: bytes) -> _Keys:
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=96,
        salt=b"lienthong/v1 packet\x00" + packet_id,
        info=b"body|meta|commit",
    ).derive(cek)
    return _Keys(AESGCM(okm[:32]), AESGCM(okm[32:64]), okm[64:])


def wrap_info(packet_id: bytes, organ: str, kid: bytes) -> bytes:
    """HPKE ``info``: binds the wrapped CEK to this packet, this organ and this key."""
    return b"lienthong/v1 wrap\x00" + packet_id + organ.encode() + b"\x00" + kid


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _chunk_out(
    buf: bytearray,
    data: bytes | bytearray | memoryview,
    size: int,
    process: Callable[[memoryview | bytearray], bytes],
    limit: int | None = None,
) -> list[bytes]:
    """Cut ``buf`` + ``data`` into chunks of ``size``; return ``process`` of each.

    With ``limit`` None a chunk is cut only when at least one byte follows it (the sealer
    cannot know which chunk is last); otherwise at most ``limit`` chunks are cut (the
    opener knows).  The rest stays in ``buf``.  Whole chunks are taken straight from
    ``data`` so the hot path copies nothing it need not.
    """

    def more(avail: int, cut: int) -> bool:
        return avail > size if limit is None else (avail >= size and cut < limit)

    mv = memoryview(data)
    try:
        out: list[bytes] = []
        pos = 0
        n = len(mv)
        if buf:
            if not more(len(buf) + n, 0):
                buf += mv
                return out
            pos = size - len(buf)
            buf += mv[:pos]
            out.append(process(buf))
            buf.clear()
        while more(n - pos, len(out)):
            out.append(process(mv[pos : pos + size]))
            pos += size
        buf += mv[pos:]
        return out
    finally:
        mv.release()


# --- sealing -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recipient:
    organ: str
    key: EncryptionPublicKey


class Sealer:
    """Encrypts files into a body stream, then signs the envelope.

    ``add_file`` starts a file, ``feed`` takes its bytes and returns the ciphertext chunks
    completed so far, ``finish`` returns the last chunk and the envelope container bytes.
    """

    def __init__(
        self,
        *,
        sender: str,
        signing_key: SigningPrivateKey,
        recipients: Sequence[Recipient],
        metadata: DocumentMetadata,
        routing: Routing | None = None,
        kind: str = "document",
        chunk_size: int = DEFAULT_CHUNK,
        packet_id: bytes | None = None,
        created_at: int | None = None,
        cek: bytes | None = None,
    ) -> None:
        try:
            check_organ_code(sender)
            for r in recipients:
                check_organ_code(r.organ)
            _check_chunk(chunk_size)
        except RemoteError as exc:
            raise LocalError(str(exc)) from None
        if kind not in KINDS:
            raise LocalError(f"kind {kind!r}")
        if not recipients or len(recipients) > MAX_RECIPIENTS:
            raise LocalError("a packet has 1 to 2000 recipients")
        if len({r.organ for r in recipients}) != len(recipients):
            raise LocalError("a recipient organ is named twice")
        self._routing = routing or Routing()
        self._metadata = metadata.normalised()
        try:
            self._routing.check(kind)
            # Refuse now what the hub or every recipient would refuse later: a sealer must
            # never sign a packet its own parser rejects (field lengths, dates, NFC ...).
            Routing.from_cbor(self._routing.to_cbor())
            DocumentMetadata.from_cbor(replace(self._metadata, files=()).to_cbor())
        except RemoteError as exc:
            raise LocalError(str(exc)) from None
        self._sender = sender
        self._signing_key = signing_key
        self._recipients = sorted(recipients, key=lambda r: r.organ)
        self._kind = kind
        self._chunk = chunk_size
        self.packet_id = packet_id or new_packet_id()
        self._created = int(time.time()) if created_at is None else created_at
        self._cek = cek if cek is not None else os.urandom(CEK_SIZE)
        try:
            check_packet_id(self.packet_id)
        except RemoteError as exc:
            raise LocalError(str(exc)) from None
        if self._created < 0 or len(self._cek) != CEK_SIZE:
            raise LocalError("created_at must be Unix seconds and the CEK 32 bytes")
        self._keys = _derive(self._cek, self.packet_id)
        self._buf = bytearray()
        self._counter = 0
        self._ct_hash = hashlib.sha256()
        self._ct_size = 0
        self._files: list[FileInfo] = []
        self._file: tuple[str, str] | None = None
        self._file_hash = hashlib.sha256()
        self._file_size = 0
        self._done = False

    def add_file(self, name: str, media_type: str = "application/octet-stream") -> None:
        if self._done:
            raise LocalError("sealer already finished")
        self._close_file()
        name = nfc(name)
        try:
            check_file_name(name)
            check_text(media_type, name="media type", max_len=127)
        except RemoteError as exc:
            raise LocalError(str(exc)) from None
        if len(self._files) >= MAX_FILES:
            raise LocalError(f"a packet holds at most {MAX_FILES} files")
        self._file = (name, media_type)

    def _close_file(self) -> None:
        if self._file is not None:
            self._files.append(
                FileInfo(self._file[0], self._file[1], self._file_size, self._file_hash.digest())
            )
            self._file = None
            self._file_hash = hashlib.sha256()
            self._file_size = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Encrypt ``data``; return the STREAM chunks completed (ciphertext, in order)."""
        if self._file is None or self._done:
            raise LocalError("call add_file before feeding bytes")
        self._file_size += len(data)
        # Only ``finish`` knows which chunk is the last, so a complete chunk is encrypted
        # only once at least one more byte has arrived behind it.  Whole chunks are taken
        # straight from ``data`` (one copy less), and each slice is hashed right before it
        # is encrypted, while it is still in the CPU cache.
        out: list[bytes] = []
        step = self._chunk
        with memoryview(data) as mv:
            for pos in range(0, len(mv), step):
                piece = mv[pos : pos + step]
                self._file_hash.update(piece)
                out += _chunk_out(self._buf, piece, step, self._encrypt)
        return out

    def _encrypt(self, chunk: memoryview | bytearray) -> bytes:
        ct = self._keys.body.encrypt(_nonce(self._counter, False), chunk, None)
        self._counter += 1
        self._ct_hash.update(ct)
        self._ct_size += len(ct)
        return ct

    def finish(self) -> tuple[bytes, bytes]:
        """Return ``(last ciphertext, envelope container bytes)``."""
        if self._done:
            raise LocalError("sealer already finished")
        self._done = True
        self._close_file()
        last = self._keys.body.encrypt(_nonce(self._counter, True), bytes(self._buf), None)
        self._buf.clear()
        self._ct_hash.update(last)
        self._ct_size += len(last)
        meta = replace(self._metadata, files=tuple(self._files))
        meta_pt = encode(meta.to_cbor())
        if len(meta_pt) + TAG > _META_MAX:
            raise LocalError(f"the metadata exceeds {_META_MAX} bytes once encrypted")
        meta_ct = self._keys.meta.encrypt(_META_NONCE, meta_pt, self.packet_id)
        body = {
            "v": VERSION,
            "id": self.packet_id,
            "kind": self._kind,
            "from": {"organ": self._sender, "kid": self._signing_key.kid},
            "created": self._created,
            "to": [
                {
                    "organ": r.organ,
                    "kid": r.key.kid,
                    "wrap": r.key.wrap(self._cek, wrap_info(self.packet_id, r.organ, r.key.kid)),
                }
                for r in self._recipients
            ],
            "route": self._routing.to_cbor(),
            "meta": meta_ct,
            "body": {
                "size": self._ct_size,
                "chunk": self._chunk,
                "suite": SUITE,
                "sha256": self._ct_hash.digest(),
            },
            "commit": self._keys.commitment,
        }
        return last, signed.sign(self._signing_key, signed.CTX_ENVELOPE, encode(body))


# --- checking a body without keys (the hub) ------------------------------------------


class BodyVerifier:
    """Checks a body stream's size and SHA-256 against the envelope: no key needed."""

    def __init__(self, info: BodyInfo) -> None:
        self._info = info
        self._hash = hashlib.sha256()
        self.received = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.received += len(data)
        if self.received > self._info.size:
            raise RemoteError("body_extended", f"body exceeds its declared {self._info.size} bytes")
        self._hash.update(data)

    def finish(self) -> bytes:
        if self.received < self._info.size:
            raise RemoteError("truncated_body", f"{self.received} of {self._info.size} bytes")
        digest = self._hash.digest()
        if not hmac.compare_digest(digest, self._info.sha256):
            raise RemoteError("body_digest_mismatch")
        return digest


# --- opening -------------------------------------------------------------------------


class Opener:
    """Opens a packet for one recipient, chunk by chunk.

    The envelope should already be verified (:meth:`Envelope.verify_sender`).  The
    constructor unwraps the CEK, checks the commitment and decrypts the metadata;
    ``feed`` returns ``(file index, plaintext)`` pieces; ``finish`` confirms the final
    chunk, the body digest and every file's size and SHA-256.  Plaintext handed out before
    ``finish`` returns is *unverified*: callers write it aside and release it only then.
    """

    def __init__(self, envelope: Envelope, *, organ: str, key: EncryptionPrivateKey) -> None:
        stanza = envelope.stanza(organ)
        if stanza.kid != key.kid:
            raise RemoteError(
                "recipient_not_addressed", f"packet is sealed to another key of {organ}"
            )
        cek = key.unwrap(stanza.wrapped, wrap_info(envelope.packet_id, organ, stanza.kid))
        if len(cek) != CEK_SIZE:
            raise RemoteError("key_unwrap_failed", "content key has the wrong size")
        keys = _derive(cek, envelope.packet_id)
        if not hmac.compare_digest(keys.commitment, envelope.commitment):
            raise RemoteError("cek_commitment_mismatch")
        try:
            meta_pt = keys.meta.decrypt(_META_NONCE, envelope.meta_ct, envelope.packet_id)
        except InvalidTag:
            raise RemoteError("metadata_tag_invalid") from None
        self.metadata = DocumentMetadata.from_cbor(decode(meta_pt, max_size=1 << 20, max_depth=4))
        self.envelope = envelope
        info = envelope.body_info
        if sum(f.size for f in self.metadata.files) != info.plaintext_size:
            raise RemoteError("file_digest_mismatch", "file sizes do not add up to the body")
        self._key = keys.body
        self._info = info
        self._chunks = info.chunks
        self._full = info.chunk + TAG
        self._verifier = BodyVerifier(info)
        self._buf = bytearray()
        self._counter = 0
        self._file_index = 0
        self._file_left = self.metadata.files[0].size if self.metadata.files else 0
        self._file_hash = hashlib.sha256()
        self._done = False
        self._skip_empty()

    def _skip_empty(self) -> None:
        files = self.metadata.files
        while self._file_left == 0 and self._file_index < len(files):
            if not hmac.compare_digest(self._file_hash.digest(), files[self._file_index].sha256):
                raise RemoteError(
                    "file_digest_mismatch", f"file {self._file_index} SHA-256 differs"
                )
            self._file_index += 1
            self._file_hash = hashlib.sha256()
            if self._file_index < len(files):
                self._file_left = files[self._file_index].size

    def _split(self, pt: bytes, out: list[tuple[int, bytes]]) -> None:
        pos = 0
        while pos < len(pt):
            take = min(self._file_left, len(pt) - pos)
            piece = pt[pos : pos + take] if take != len(pt) else pt
            self._file_hash.update(piece)
            out.append((self._file_index, piece))
            pos += take
            self._file_left -= take
            self._skip_empty()

    def _open_chunk(self, data: bytes | bytearray | memoryview, last: bool) -> bytes:
        try:
            pt = self._key.decrypt(_nonce(self._counter, last), data, None)
        except InvalidTag:
            raise RemoteError("chunk_tag_invalid", f"chunk {self._counter}") from None
        self._counter += 1
        return pt

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        if self._done:
            raise LocalError("opener already finished")
        self._verifier.feed(data)
        out: list[tuple[int, bytes]] = []

        def open_one(chunk: memoryview | bytearray) -> bytes:
            pt = self._open_chunk(chunk, False)
            self._split(pt, out)
            return pt

        # The declared size says which chunk is the last: every earlier one opens as soon
        # as it is complete; the last waits for ``finish``.
        _chunk_out(self._buf, data, self._full, open_one, self._chunks - 1 - self._counter)
        return out

    def finish(self) -> list[tuple[int, bytes]]:
        if self._done:
            raise LocalError("opener already finished")
        self._done = True
        if self._verifier.received < self._info.size:
            raise RemoteError(
                "truncated_body", f"{self._verifier.received} of {self._info.size} bytes"
            )
        out: list[tuple[int, bytes]] = []
        self._split(self._open_chunk(bytes(self._buf), True), out)
        self._buf.clear()
        self._verifier.finish()
        if self._file_index != len(self.metadata.files):
            raise RemoteError("file_digest_mismatch", "body ended inside a file")
        return out


def open_packet(
    envelope: Envelope, body: bytes, *, organ: str, key: EncryptionPrivateKey
) -> tuple[DocumentMetadata, list[bytes]]:
    """Open a whole in-memory packet: convenience for small documents and tests."""
    opener = Opener(envelope, organ=organ, key=key)
    files = [bytearray() for _ in opener.metadata.files]
    for idx, piece in opener.feed(body) + opener.finish():
        files[idx] += piece
    return opener.metadata, [bytes(f) for f in files]


def seal_packet(
    *,
    sender: str,
    signing_key: SigningPrivateKey,
    recipients: Sequence[Recipient],
    metadata: DocumentMetadata,
    files: Sequence[tuple[str, str, bytes]],
    routing: Routing | None = None,
    kind: str = "document",
    **kwargs: Any,
) -> tuple[bytes, bytes]:
    """Seal whole in-memory files; returns ``(envelope container, body)``."""
    sealer = Sealer(
        sender=sender,
        signing_key=signing_key,
        recipients=recipients,
        metadata=metadata,
        routing=routing,
        kind=kind,
        **kwargs,
    )
    parts = []
    for name, media, data in files:
        sealer.add_file(name, media)
        parts.extend(sealer.feed(data))
    last, env = sealer.finish()
    parts.append(last)
    return env, b"".join(parts)
