"""Errors of the Lienthong protocol.

One base, :class:`LienthongError`, and two branches that say who is at fault:

* :class:`RemoteError` -- a peer sent something invalid (bad signature, tampered body,
  unknown recipient, malformed CBOR ...).  It carries a stable machine ``code`` from
  :data:`CODES` and an HTTP status hint, so the hub can turn it into a JSON problem
  response and the node's CLI can print the same code.  Every code is documented in
  ``docs/errors.md``; a test keeps the two in step.
* :class:`LocalError` -- we misused our own API (a bug, or a caller passing nonsense).

Nothing in ``protocol`` raises any other exception type on untrusted input: the fuzz
harnesses hold it to "parse or raise a RemoteError, nothing else".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """A stable error code: its name, the HTTP status hint and a one-line meaning."""

    code: str
    status: int
    meaning: str


def _codes(*items: tuple[str, int, str]) -> dict[str, ErrorCode]:
    out: dict[str, ErrorCode] = {}
    for code, status, meaning in items:
        if code in out:
            raise AssertionError(f"duplicate error code {code}")
        out[code] = ErrorCode(code, status, meaning)
    return out


#: Every remote error code, its HTTP status hint and its meaning.
CODES: Final[dict[str, ErrorCode]] = _codes(
    # --- encoding -------------------------------------------------------------
    ("cbor_malformed", 400, "The bytes are not well-formed CBOR, or hold trailing bytes."),
    ("cbor_not_canonical", 400, "The CBOR is not in deterministic encoding (RFC 8949 §4.2)."),
    (
        "cbor_too_large",
        413,
        "The CBOR item, or one of its strings or arrays, exceeds the size bound.",
    ),
    ("cbor_too_deep", 400, "The CBOR nesting is deeper than allowed."),
    ("cbor_duplicate_key", 400, "A CBOR map repeats a key."),
    (
        "cbor_type_unsupported",
        400,
        "The CBOR holds a type the protocol never uses (tag, float, undefined ...).",
    ),
    ("field_missing", 400, "A required field is absent."),
    ("field_invalid", 400, "A field has the wrong type or a value out of range."),
    ("field_unknown", 400, "A map carries a field the format does not define."),
    ("version_unsupported", 400, "The format version is not one this software speaks."),
    ("text_invalid", 400, "A text field is not NFC-normalised UTF-8 or holds control characters."),
    # --- identities, keys and the directory -----------------------------------
    (
        "organ_code_invalid",
        400,
        "An organ code has characters outside [0-9A-Za-z.-_/] or a bad length.",
    ),
    ("key_invalid", 400, "A public or private key cannot be decoded for its algorithm."),
    ("algorithm_unsupported", 400, "The named signature, KEM or AEAD algorithm is not supported."),
    ("key_unknown", 422, "The key id is not among the organ's keys in its directory entry."),
    ("key_expired", 422, "The key's validity ended before the time in question."),
    ("key_not_yet_valid", 422, "The key's validity starts after the time in question."),
    ("key_revoked", 422, "The key was revoked at or before the time in question."),
    (
        "directory_signature_invalid",
        422,
        "A directory entry is not signed by the directory authority.",
    ),
    ("organ_not_valid", 422, "The organ's directory entry is not valid at the time in question."),
    ("organ_mismatch", 422, "The directory entry given belongs to another organ."),
    # --- signatures -----------------------------------------------------------
    ("signature_invalid", 422, "A signature does not verify with the signer's key."),
    (
        "hybrid_signature_missing",
        422,
        "A hybrid key needs both Ed25519 and ML-DSA-65 signatures; one is missing.",
    ),
    (
        "signature_unexpected",
        422,
        "A signature is present that the signer's key algorithm does not produce.",
    ),
    # --- packets --------------------------------------------------------------
    ("packet_id_invalid", 400, "The packet id is not a 16-byte UUIDv7."),
    ("recipient_not_addressed", 403, "The organ or key is not among the packet's recipients."),
    ("recipient_duplicate", 400, "The same recipient organ appears twice in one packet."),
    (
        "key_unwrap_failed",
        422,
        "The wrapped content key cannot be opened with the recipient's key.",
    ),
    ("cek_commitment_mismatch", 422, "The content key does not match the envelope's commitment."),
    ("metadata_tag_invalid", 422, "The encrypted metadata fails authentication."),
    ("chunk_tag_invalid", 422, "A body chunk fails authentication (tampered or reordered)."),
    ("truncated_body", 422, "The body ends before its final chunk."),
    (
        "body_extended",
        422,
        "Bytes follow the body's final chunk, or the body exceeds its declared size.",
    ),
    ("body_size_mismatch", 422, "The body's length differs from the size the envelope declares."),
    (
        "body_digest_mismatch",
        422,
        "The body's SHA-256 differs from the digest the envelope declares.",
    ),
    ("file_digest_mismatch", 422, "A decrypted file's SHA-256 or size differs from the metadata."),
    ("chunk_size_invalid", 400, "The chunk size is not a power of two from 64 KiB to 1 MiB."),
    (
        "routing_invalid",
        400,
        "The clear routing fields are inconsistent (e.g. a reference on a classified packet).",
    ),
    # --- receipts and status --------------------------------------------------
    ("receipt_envelope_mismatch", 422, "The receipt names another envelope digest or packet."),
    (
        "receipt_signer_mismatch",
        422,
        "The receipt is signed by an organ other than the one it speaks for.",
    ),
    ("status_code_unknown", 400, "The status code is not one of 01-06, 13, 15, 16."),
    ("reason_required", 400, "This status needs a reason (rejection, recall, recall refusal)."),
    ("transition_invalid", 409, "The status cannot follow the current state of this delivery."),
    # --- the audit log --------------------------------------------------------
    ("proof_invalid", 422, "An inclusion or consistency proof does not verify."),
    ("tree_size_invalid", 400, "A tree size or leaf index is out of range."),
    ("checkpoint_malformed", 400, "A checkpoint or signed note is not in C2SP format."),
    ("checkpoint_signature_invalid", 422, "A checkpoint is not signed by the log's key."),
    ("cosignature_invalid", 422, "A witness cosignature does not verify."),
    ("checkpoint_inconsistent", 409, "Two checkpoints of one log cannot both be true (a fork)."),
    # --- policy ---------------------------------------------------------------
    (
        "secrecy_refused",
        403,
        "This deployment does not carry documents of the declared secrecy level.",
    ),
    ("secrecy_not_by_email", 403, "Classified documents never travel by e-mail."),
    ("route_not_allowed", 403, "The route from sender to recipient is not allowed by policy."),
    ("size_limit_exceeded", 413, "The packet exceeds a size limit of this deployment."),
    # --- e-mail ------------------------------------------------------------------
    (
        "mail_invalid",
        400,
        "The e-mail is not a well-formed Lienthong message (MIME, parts, headers).",
    ),
    (
        "transport_not_allowed",
        403,
        "The organ's directory entry does not allow this transport (e.g. e-mail).",
    ),
    # --- the hub's API ---------------------------------------------------------
    ("request_invalid", 400, "The request is malformed: bad JSON, query or header."),
    ("token_missing", 401, "The endpoint needs a bearer token."),
    ("token_invalid", 401, "The bearer token is unknown, expired, or its key was revoked."),
    ("challenge_invalid", 401, "The session challenge is unknown, expired or already used."),
    ("enrolment_token_invalid", 401, "The enrolment token is unknown, expired or already used."),
    ("role_forbidden", 403, "The caller's role may not use this endpoint or see this object."),
    ("organ_unknown", 404, "No organ with this code is in the directory."),
    ("recipient_unknown", 422, "A recipient organ is not in the directory."),
    ("packet_unknown", 404, "No packet with this id is visible to the caller."),
    ("body_unknown", 404, "No body with this digest is visible to the caller."),
    ("packet_conflict", 409, "A packet with this id but other envelope bytes exists."),
    ("body_not_expected", 409, "The packet's body is already stored, or no envelope awaits it."),
    ("range_invalid", 416, "The requested byte range is outside the body."),
    ("clock_skew", 422, "The envelope's creation time is too far from the hub's clock."),
    ("route_unknown", 404, "No endpoint at this path."),
    ("method_not_allowed", 405, "The endpoint does not take this HTTP method."),
    ("internal", 500, "A fault of the server itself; the detail names the request id to report."),
)


class LienthongError(Exception):
    """Base of every error Lienthong raises on purpose."""


class LocalError(LienthongError):
    """Our own fault: the API was misused. Never caused by a peer's bytes."""


class RemoteError(LienthongError):
    """A peer sent something invalid. ``code`` is stable; ``status`` is an HTTP hint."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        known = CODES.get(code)
        if known is None:
            raise LocalError(f"unregistered error code {code!r}")
        self.code = code
        self.status = known.status
        self.detail = detail or known.meaning
        super().__init__(f"{code}: {self.detail}")

    def to_problem(self) -> dict[str, str | int]:
        """The JSON problem body the hub answers with."""
        return {"code": self.code, "status": self.status, "detail": self.detail}
