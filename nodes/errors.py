"""Errors of the node agent, and how they map to what the command line prints.

The protocol's tree (:mod:`protocol.errors`) says who is at fault: a
:class:`~protocol.errors.RemoteError` is a peer's invalid bytes, a
:class:`~protocol.errors.LocalError` our own misuse.  The node adds three kinds of its own:

* :class:`NodeError` -- something the office can fix locally (no keystore, wrong
  passphrase, unknown packet id, an impossible status step ...), with a stable ``code``;
* :class:`HubError` -- the hub answered with a JSON problem (``{"code", "detail"}``); it
  carries the hub's code verbatim, so ``token_invalid`` or ``route_not_allowed`` reach the
  clerk exactly as the hub said them;
* :class:`HubUnavailable` -- no answer at all (connection refused, timeout, 5xx from a
  proxy): the caller queues and retries, this is never a reason to give a packet up.

Every one of them has a ``code`` and a one-line ``detail``: the CLI prints
``error: <code>: <detail>`` and exits non-zero.
"""

from __future__ import annotations

from typing import Final

from protocol.errors import CODES, LienthongError, LocalError, RemoteError

#: Codes the node itself raises, with their meaning (the protocol's are in CODES).
NODE_CODES: Final[dict[str, str]] = {
    "already_initialised": "This home folder already holds an office.",
    "config_invalid": "config.json holds an invalid setting.",
    "enrolment_mismatch": "The hub's entry after enrolment does not list the new keys.",
    "file_name_invalid": "A file name cannot travel (a path, a control character ...).",
    "file_unreadable": "A file to send cannot be read.",
    "files_missing": "No file to send was named.",
    "hub_certificate_invalid": (
        "The hub's TLS certificate does not verify against the trusted CAs "
        "(ca_file in config.json, else the system's)."
    ),
    "hub_key_mismatch": "The hub announces other keys than the ones pinned at enrolment.",
    "hub_unreachable": "The hub cannot be reached; what waits for it stays queued.",
    "http_error": "The hub answered with an HTTP error and no problem body.",
    "keystore_damaged": "The keystore file is damaged or not a Lienthong keystore.",
    "keystore_missing": "There is no keystore: run `lienthong-node init` first.",
    "keystore_permissions": "The keystore is readable by others: chmod 600 it.",
    "key_missing": "A pinned key is needed to verify this offline (give the auditor's home).",
    "local": "An internal error of the node (a bug): please report it.",
    "no_checkpoint": "No checkpoint was accepted yet: run `lienthong-audit checkpoint`.",
    "not_initialised": "The home folder has no office: run `lienthong-node init`.",
    "packet_ambiguous": "The packet id prefix matches several packets.",
    "packet_not_accepted": "The packet has not reached the hub yet.",
    "packet_not_found": "No packet with this id in this office's store.",
    "packet_refused": "The packet failed verification; only a rejection applies to it.",
    "passphrase_missing": "The keystore passphrase is needed and was not given.",
    "passphrase_wrong": "Wrong passphrase, or the keystore was altered.",
    "recipient_invalid": "A recipient code is invalid or not an office.",
    "recipient_not_valid": "A recipient is no longer valid and names no successor.",
    "recipients_missing": "No recipient was given (or only this office itself).",
    "register_kind_invalid": "The register kind is 'in' or 'out'.",
    "register_number_taken": "This number is already in the register for the period.",
    "request_invalid": "The request to send is invalid.",
    "response_invalid": "The hub's answer is not what its API documents.",
    "store_too_new": "The local store was written by a newer node.",
    "witnesses_insufficient": "Fewer valid witness cosignatures than the threshold required.",
}


class NodeError(LocalError):
    """A local condition the office can act on; ``code`` is stable, ``detail`` one line."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class HubError(LienthongError):
    """The hub refused a request with a JSON problem body."""

    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.status = status
        self.detail = detail

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed (server trouble, not a refusal)."""
        return self.status >= 500 or self.status == 429

    def as_remote(self) -> RemoteError | None:
        """The protocol error of the same code, if the code is one of the protocol's."""
        if self.code in CODES:
            return RemoteError(self.code, self.detail)
        return None


class HubUnavailable(LienthongError):
    """The hub could not be reached, or did not answer in time."""

    code = "hub_unreachable"

    def __init__(self, detail: str) -> None:
        super().__init__(f"hub_unreachable: {detail}")
        self.detail = detail


def error_code(exc: BaseException) -> str:
    """The stable code of any error the node reports."""
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    if isinstance(exc, LocalError):
        return "local"
    return "error"


def error_detail(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str):
        return detail
    return str(exc) or type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether the operation should be retried later rather than given up."""
    if isinstance(exc, HubUnavailable):
        return True
    if isinstance(exc, HubError):
        return exc.transient
    return False
