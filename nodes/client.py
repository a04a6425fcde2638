"""Async client of the hub's HTTP API (``/v1``), over aiohttp.

It speaks only the wire formats of :mod:`protocol` (envelopes, bodies, receipts, entries)
and the JSON documented by the hub; it never imports the hub.

* **Sessions.**  :meth:`HubClient.login` signs the hub's challenge with the office's
  signing key and keeps the bearer token; a request answered ``401 token_invalid`` or
  ``token_missing`` logs in again once and is repeated (a token lives 15 minutes, the
  daemon runs for months).
* **Directory.**  Every entry the hub serves is verified against the directory authority
  key pinned at enrolment (:func:`protocol.directory.verify_entry`) before it is returned:
  a hub database edit cannot swap an office's key.
* **Bodies stream.**  An upload reads the sealed body from its file in 256 KiB pieces; a
  download writes to a ``.part`` file and resumes with ``Range`` where it stopped, so
  memory stays bounded whatever the size and an interrupted transfer is not started over.
  Small bodies (at most 64 KiB) come inline in the mailbox answer instead
  (:func:`inline_body`), checked exactly like a downloaded one.
* **Errors.**  A JSON problem answer (``{"code", "detail"}``) raises :class:`HubError`
  with the hub's code; no answer at all (refused, reset, timed out) or a 5xx without a
  problem body raises :class:`HubUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from protocol import signed
from protocol.codec import decode, encode
from protocol.directory import SignedEntry, verify_entry
from protocol.errors import RemoteError
from protocol.keys import (
    EncryptionPrivateKey,
    EncryptionPublicKey,
    SigningPrivateKey,
    SigningPublicKey,
)
from protocol.packet import BodyInfo, BodyVerifier

from .errors import HubError, HubUnavailable, NodeError
from .keystore import Keystore

CHUNK: Final = 256 * 1024
#: Receive buffer of a body stream (:meth:`HubClient.body_stream`): the connection is
#: paused only when twice this much waits, not every 512 KiB the consumer lags behind.
BODY_READ_BUFFER: Final = 2 * 1024 * 1024
CBOR: Final = "application/cbor"
USER_AGENT: Final = "lienthong-node/0.1"
#: Directory batch size per request (the hub takes up to 2000).
DIRECTORY_BATCH: Final = 500

#: Called with (bytes done, bytes total) as a transfer advances.
Progress = Callable[[int, int], None]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str = "field") -> bytes:
    if not isinstance(text, str):
        raise HubError("response_invalid", 502, f"the hub's {what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise HubError("response_invalid", 502, f"the hub's {what} is not base64") from None


def inline_body(item: Mapping[str, Any], info: BodyInfo) -> bytes | None:
    """The body a mailbox item carries inline (``body.data``), or None when it has none.

    Checked like a download against the envelope's size and SHA-256
    (:class:`protocol.packet.BodyVerifier`: ``body_extended``, ``truncated_body``,
    ``body_digest_mismatch``); the Opener checks everything else.  Data that is not
    base64 counts as absent: the body is then downloaded as before.
    """
    body = item.get("body")
    data = body.get("data") if isinstance(body, Mapping) else None
    if data is None:
        return None
    try:
        raw = unb64(data, "inline body")
    except HubError:
        return None
    verifier = BodyVerifier(info)
    verifier.feed(raw)
    verifier.finish()
    return raw


def packet_text(packet_id: bytes) -> str:
    return str(uuid.UUID(bytes=packet_id))


def enrol_message(token: str, organ: str) -> bytes:
    """What the new signing key signs at enrolment (``CTX_ENROL``): token, NUL, organ."""
    return token.encode("ascii") + b"\x00" + organ.encode("ascii")


def session_message(challenge: bytes, organ: str) -> bytes:
    """What the office signs to open a session (``CTX_SESSION``): challenge, organ."""
    return challenge + organ.encode("ascii")


@dataclass(frozen=True, slots=True)
class BodyStream:
    """A body download under way: where it begins, and its bytes."""

    start: int
    content: aiohttp.StreamReader


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What enrolment answers: our signed entry, and the hub's two public keys."""

    entry: SignedEntry
    authority: SigningPublicKey
    hub_key: SigningPublicKey


async def enrol_new_keys(
    client: HubClient,
    token: str,
    *,
    hybrid: bool = False,
    on_hybrid_retry: Callable[[], None] | None = None,
) -> tuple[Keystore, Enrolled]:
    """New keys, enrolled with a one-time token, in a keystore pinning the hub's keys.

    A hub that takes hybrid keys only says so by refusing classic ones
    (``algorithm_unsupported``): then new hybrid keys, once.
    """
    while True:
        signing = SigningPrivateKey.generate(hybrid=hybrid)
        encryption = EncryptionPrivateKey.generate(hybrid=hybrid)
        try:
            enrolled = await client.enrol(token, signing, encryption.public_key())
        except HubError as exc:
            if exc.code != "algorithm_unsupported" or hybrid:
                raise
            if on_hybrid_retry is not None:
                on_hybrid_retry()
            hybrid = True
            continue
        keystore = Keystore(
            organ=client.organ,
            hub_url=client.base,
            authority=enrolled.authority,
            signing_keys=[signing],
            encryption_keys=[encryption],
            hub_key=enrolled.hub_key,
        )
        return keystore, enrolled


def _public_key(doc: Any, what: str) -> SigningPublicKey:
    if not isinstance(doc, dict):
        raise HubError("response_invalid", 502, f"the hub's {what} is missing")
    alg = doc.get("alg")
    if not isinstance(alg, str):
        raise HubError("response_invalid", 502, f"the hub's {what} has no algorithm")
    return SigningPublicKey.from_raw(alg, unb64(doc.get("pub"), what))


class HubClient:
    """One office's connection to the hub.  Use as ``async with HubClient(...) as hub``."""

    def __init__(
        self,
        base_url: str,
        *,
        organ: str,
        signing_key: SigningPrivateKey | None = None,
        authority: SigningPublicKey | None = None,
        ca_file: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.organ = organ
        self.signing_key = signing_key
        self.authority = authority
        self._ca_file = ca_file or None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._login_lock = asyncio.Lock()

    async def __aenter__(self) -> HubClient:
        ssl_ctx: ssl.SSLContext | bool = True
        if self._ca_file:
            ssl_ctx = ssl.create_default_context(cafile=self._ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=8),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self._connect_timeout, sock_read=self._read_timeout
            ),
            headers={"User-Agent": USER_AGENT},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plumbing -------------------------------------------------------------------------

    def _url(self, path: str) -> URL:
        return URL(self.base + path, encoded=True)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise NodeError("local", "the hub client is not open (use `async with`)")
        return self._session

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        """Turn a non-2xx answer into HubError (problem body) or HubUnavailable."""
        if resp.status < 400:
            return
        text = ""
        try:
            text = await resp.text(errors="replace")
            doc = json.loads(text)
        except (TimeoutError, ValueError, aiohttp.ClientError):
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("code"), str):
            detail = doc.get("detail")
            raise HubError(
                doc["code"], resp.status, detail if isinstance(detail, str) else doc["code"]
            )
        if resp.status >= 500:
            raise HubUnavailable(f"HTTP {resp.status} from the hub")
        raise HubError("http_error", resp.status, f"HTTP {resp.status}: {text[:200].strip()}")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        json_body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        read_timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """One request; JSON answer (or bytes with ``raw``).  Re-logs in once on 401."""
        for attempt in (1, 2):
            hdrs = dict(headers or {})
            if auth:
                hdrs["Authorization"] = f"Bearer {await self._bearer()}"
            body = data() if callable(data) else data
            try:
                async with self.session.request(
                    method,
                    self._url(path),
                    json=json_body,
                    data=body,
                    headers=hdrs,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        connect=self._connect_timeout,
                        sock_read=read_timeout or self._read_timeout,
                    ),
                ) as resp:
                    if (
                        auth
                        and attempt == 1
                        and resp.status == 401
                        and self.signing_key is not None
                    ):
                        self._token = None
                        await resp.read()
                        continue
                    await self._raise_for(resp)
                    if raw:
                        return await resp.read()
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise HubError(
                            "response_invalid", 502, f"{method} {path}: the answer is not JSON"
                        ) from None
            except aiohttp.ClientConnectorCertificateError as exc:
                raise NodeError("hub_certificate_invalid", str(exc)) from None
            except aiohttp.ClientSSLError as exc:
                raise NodeError("hub_certificate_invalid", str(exc)) from None
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                raise HubUnavailable(_describe(exc)) from None
        raise HubError("token_invalid", 401, "the hub refused a fresh session token")

    # --- enrolment and sessions --------------------------------------------------------------

    async def enrol(
        self, token: str, signing_key: SigningPrivateKey, encryption_key: EncryptionPublicKey
    ) -> Enrolled:
        """Enrol our keys with a one-time token; verify the entry the hub signed for us."""
        if not token.isascii() or not self.organ.isascii():
            raise NodeError("enrolment_token_invalid", "the token and organ code are ASCII")
        sign_pub = signing_key.public_key()
        proof = signing_key.sign(signed.CTX_ENROL, enrol_message(token, self.organ))
        doc = await self._call(
            "POST",
            "/v1/enrol",
            auth=False,
            json_body={
                "token": token,
                "organ": self.organ,
                "signing_key": {"alg": sign_pub.alg, "pub": b64(sign_pub.raw)},
                "encryption_key": {"alg": encryption_key.alg, "pub": b64(encryption_key.raw)},
                "proof": {k: b64(v) for k, v in proof.items()},
            },
        )
        authority = _public_key(doc.get("authority"), "authority key")
        hub_key = _public_key(doc.get("hub_key"), "hub key")
        if self.authority is not None and self.authority.raw != authority.raw:
            raise NodeError("hub_key_mismatch", "the hub answered with another authority key")
        entry = verify_entry(unb64(doc.get("entry"), "entry"), authority, organ=self.organ)
        kids = {k.kid for k in entry.entry.signing_keys} | {
            k.kid for k in entry.entry.encryption_keys
        }
        if sign_pub.kid not in kids or encryption_key.kid not in kids:
            raise NodeError("enrolment_mismatch", "the hub's entry does not list our new keys")
        self.authority = authority
        return Enrolled(entry, authority, hub_key)

    async def _bearer(self) -> str:
        if self._token is None:
            await self.login()
        assert self._token is not None
        return self._token

    async def login(self) -> str:
        """Challenge, signature, bearer token."""
        async with self._login_lock:
            if self._token is not None:
                return self._token
            key = self.signing_key
            if key is None:
                raise NodeError("local", "logging in needs the office's signing key")
            doc = await self._call(
                "POST", "/v1/sessions/challenge", auth=False, json_body={"organ": self.organ}
            )
            challenge = unb64(doc.get("challenge"), "challenge")
            sigs = key.sign(signed.CTX_SESSION, session_message(challenge, self.organ))
            doc = await self._call(
                "POST",
                "/v1/sessions",
                auth=False,
                json_body={
                    "organ": self.organ,
                    "kid": key.kid.hex(),
                    "challenge": b64(challenge),
                    "signatures": {k: b64(v) for k, v in sigs.items()},
                },
            )
            token = doc.get("token")
            if not isinstance(token, str):
                raise HubError("response_invalid", 502, "the session answer has no token")
            self._token = token
            return token

    async def identity(self) -> tuple[SigningPublicKey, SigningPublicKey]:
        """The hub's (authority key, hub key), as it announces them now.

        Asked without a session (the keys are public): a node compares them with the
        pinned ones before it logs in, ``init --authority`` before it spends the token.
        """
        doc = await self._call("GET", "/v1/directory/authority", auth=False)
        return _public_key(doc.get("authority"), "authority key"), _public_key(
            doc.get("hub_key"), "hub key"
        )

    # --- directory ------------------------------------------------------------------------------

    def _verify(self, raw: bytes, organ: str | None = None) -> SignedEntry:
        if self.authority is None:
            raise NodeError("local", "no pinned directory authority key")
        return verify_entry(raw, self.authority, organ=organ)

    async def entries(self, codes: Sequence[str]) -> tuple[dict[str, SignedEntry], list[str]]:
        """Verified entries of ``codes`` and the codes the hub does not know."""
        found: dict[str, SignedEntry] = {}
        unknown: list[str] = []
        wanted = sorted(set(codes))
        for start in range(0, len(wanted), DIRECTORY_BATCH):
            part = wanted[start : start + DIRECTORY_BATCH]
            query = ",".join(quote(c, safe="") for c in part)
            doc = await self._call("GET", f"/v1/directory?organs={query}")
            entries = doc.get("entries") or {}
            if not isinstance(entries, dict):
                raise HubError("response_invalid", 502, "directory entries must be a map")
            for code, raw in entries.items():
                if code in part:
                    found[code] = self._verify(unb64(raw, "entry"), organ=code)
            unknown.extend(c for c in part if c not in found)
        return found, unknown

    async def children(self, organ: str, depth: int = 1) -> list[SignedEntry]:
        """Verified entries of the organs up to ``depth`` levels below ``organ``, valid now."""
        doc = await self._call(
            "GET", f"/v1/directory/{quote(organ, safe='')}/children?depth={depth}"
        )
        out = []
        for item in doc.get("entries") or []:
            if isinstance(item, dict) and isinstance(item.get("organ"), str):
                out.append(self._verify(unb64(item.get("entry"), "entry"), organ=item["organ"]))
        return out

    # --- packets ------------------------------------------------------------------------------------

    async def submit_envelope(self, envelope: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call(
            "POST", "/v1/packets", data=envelope, headers={"Content-Type": CBOR}
        )
        return doc

    async def upload_body(
        self, packet_id: bytes, path: Path, size: int, progress: Progress | None = None
    ) -> dict[str, Any]:
        """PUT the sealed body from ``path``, streamed; a retry starts the PUT over."""

        async def pieces() -> AsyncIterator[bytes]:
            done = 0
            with path.open("rb") as fh:
                while chunk := await asyncio.to_thread(fh.read, CHUNK):
                    done += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(done, size)

        doc: dict[str, Any] = await self._call(
            "PUT",
            f"/v1/packets/{packet_text(packet_id)}/body",
            data=pieces,
            headers={"Content-Type": "application/octet-stream"},
            read_timeout=max(self._read_timeout, 300.0),
        )
        return doc

    async def submit_batch(self, items: Sequence[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        """Envelope and body together for small packets; one result per item."""
        payload = encode([[env, body] for env, body in items])
        doc = await self._call(
            "POST", "/v1/packets/batch", data=payload, headers={"Content-Type": CBOR}
        )
        results = doc.get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise HubError("response_invalid", 502, "the batch answer does not match the request")
        return results

    async def packet_status(self, packet_id: bytes) -> dict[str, Any]:
        doc: dict[str, Any] = await self._call(
            "GET", f"/v1/packets/{packet_text(packet_id)}/status"
        )
        return doc

    # --- mailbox ------------------------------------------------------------------------------------

    async def mailbox(
        self, wait: int = 0, limit: int = 100, ack: Sequence[int] = ()
    ) -> list[dict[str, Any]]:
        """The mailbox's items, waiting up to ``wait`` seconds for some; with ``ack``, the
        hub first removes those items (the previous answer's, once stored): one request
        for both."""
        path = f"/v1/mailbox?wait={wait}&limit={limit}"
        if ack:
            doc = await self._call(
                "POST", path, json_body={"ack": list(ack)}, read_timeout=wait + 30.0
            )
        else:
            doc = await self._call("GET", path, read_timeout=wait + 30.0)
        items = doc.get("items")
        if not isinstance(items, list):
            raise HubError("response_invalid", 502, "the mailbox answer has no items")
        return [i for i in items if isinstance(i, dict)]

    async def ack(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        doc = await self._call("POST", "/v1/mailbox/ack", json_body={"ids": list(ids)})
        return int(doc.get("acknowledged") or 0)

    async def download_body(
        self,
        digest: bytes,
        info: BodyInfo,
        dest: Path,
        progress: Progress | None = None,
    ) -> None:
        """Download a body into ``dest``, resuming a partial file with ``Range``.

        The bytes are checked against the envelope's size and SHA-256 on the way
        (:class:`protocol.packet.BodyVerifier`): a body the hub altered fails here with
        ``body_digest_mismatch`` (or ``body_extended``/``truncated_body``) before any
        decryption, and the partial file is removed so a retry starts clean.
        """
        verifier, have = await asyncio.to_thread(_resume_state, dest, info)
        for attempt in (1, 2):
            if have >= info.size:
                break
            headers = {"Authorization": f"Bearer {await self._bearer()}"}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                async with self.session.get(
                    self._url(f"/v1/bodies/{digest.hex()}"), headers=headers
                ) as resp:
                    if resp.status == 401 and attempt == 1 and self.signing_key is not None:
                        self._token = None
                        await resp.read()
                        continue
                    await self._raise_for(resp)
                    if have and resp.status != 206:
                        # The hub ignored the range: start over from the first byte.
                        verifier, have = BodyVerifier(info), 0
                    with dest.open("ab" if have else "wb") as fh:
                        done = have
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            verifier.feed(chunk)  # body_extended before writing past the end
                            await asyncio.to_thread(fh.write, chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(done, info.size)
                        await asyncio.to_thread(_sync_file, fh)
                    have = done
            except aiohttp.ClientSSLError as exc:
                raise NodeError("hub_certificate_invalid", str(exc)) from None
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                raise HubUnavailable(_describe(exc)) from None
            except RemoteError:
                await asyncio.to_thread(dest.unlink, True)
                raise
            break
        try:
            verifier.finish()
        except RemoteError:
            await asyncio.to_thread(dest.unlink, True)
            raise

    @contextlib.asynccontextmanager
    async def body_stream(self, digest: bytes, start: int = 0) -> AsyncIterator[BodyStream]:
        """GET a body from byte ``start`` (``Range``); the caller reads and checks it.

        The stream's ``start`` says where it really begins: 0 when the hub ignored the
        range.  Errors map as everywhere else, also while the caller reads: no answer or
        a broken stream is :class:`HubUnavailable`, a problem answer :class:`HubError`.
        """
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {await self._bearer()}"}
            if start:
                headers["Range"] = f"bytes={start}-"
            try:
                async with self.session.get(
                    self._url(f"/v1/bodies/{digest.hex()}"),
                    headers=headers,
                    read_bufsize=BODY_READ_BUFFER,
                ) as resp:
                    if resp.status == 401 and attempt == 1 and self.signing_key is not None:
                        self._token = None
                        await resp.read()
                        continue
                    await self._raise_for(resp)
                    yield BodyStream(start if resp.status == 206 else 0, resp.content)
                    return
            except aiohttp.ClientSSLError as exc:
                raise NodeError("hub_certificate_invalid", str(exc)) from None
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                raise HubUnavailable(_describe(exc)) from None
        raise HubError("token_invalid", 401, "the hub refused a fresh session token")

    # --- receipts -----------------------------------------------------------------------------------

    async def post_receipts(self, receipts: Sequence[bytes]) -> list[dict[str, Any]]:
        doc = await self._call(
            "POST", "/v1/receipts", json_body={"receipts": [b64(r) for r in receipts]}
        )
        results = doc.get("results")
        if not isinstance(results, list) or len(results) != len(receipts):
            raise HubError("response_invalid", 502, "the receipts answer does not match")
        return results

    # --- the audit log -------------------------------------------------------------------------------

    async def checkpoint(self, *, size: int | None = None, min_cosignatures: int = 0) -> bytes:
        """The log's newest signed note (or the one of ``size``, or the newest with at
        least ``min_cosignatures`` witness cosignatures)."""
        query = ""
        if size is not None:
            query = f"?size={size}"
        elif min_cosignatures:
            query = f"?min_cosignatures={min_cosignatures}"
        data: bytes = await self._call("GET", f"/v1/log/checkpoint{query}", auth=False, raw=True)
        return data

    async def consistency(self, old: int, new: int) -> list[bytes]:
        doc = await self._call("GET", f"/v1/log/proof/consistency?old={old}&new={new}")
        proof = doc.get("proof")
        if not isinstance(proof, list):
            raise HubError("response_invalid", 502, "the consistency answer has no proof")
        return [unb64(h, "proof hash") for h in proof]

    async def bundle(self, packet_id: bytes, size: int | None = None) -> bytes:
        query = "" if size is None else f"?size={size}"
        data: bytes = await self._call(
            "GET", f"/v1/log/packets/{packet_text(packet_id)}/bundle{query}", raw=True
        )
        return data

    async def log_entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``[start, end)`` as the hub serves them (at most a page: page on)."""
        data = await self._call(
            "GET", f"/v1/log/entries?start={start}&end={end}", raw=True, headers={"Accept": CBOR}
        )
        try:
            doc = decode(data, max_size=64 * 1024 * 1024, max_depth=3)
        except RemoteError as exc:
            raise HubError("response_invalid", 502, f"the entries answer: {exc.detail}") from None
        entries = doc.get("entries") if isinstance(doc, dict) else None
        if (
            not isinstance(entries, list)
            or doc.get("start") != start
            or not all(isinstance(e, bytes) for e in entries)
        ):
            raise HubError("response_invalid", 502, "the entries answer is not a list of entries")
        return list(entries)

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        doc = await self._call("GET", f"/v1/log/proof/inclusion?index={index}&size={size}")
        proof = doc.get("proof")
        if not isinstance(proof, list):
            raise HubError("response_invalid", 502, "the inclusion answer has no proof")
        return [unb64(h, "proof hash") for h in proof]

    async def cosign(self, note: bytes) -> dict[str, Any]:
        """Hand the hub our witness cosignature on a checkpoint (the note with our line)."""
        doc: dict[str, Any] = await self._call(
            "POST",
            "/v1/log/cosignatures",
            data=note,
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        return doc

    async def directory_log(self, organ: str, size: int) -> list[tuple[int, bytes, list[bytes]]]:
        """The ``directory`` events of ``organ`` in the tree of ``size``, with inclusion
        proofs: (index, entry bytes, proof).  The hub could leave one out; following the
        whole log (``lienthong-audit monitor``) is what catches that."""
        doc = await self._call("GET", f"/v1/log/directory/{quote(organ, safe='')}?size={size}")
        events = doc.get("events")
        if not isinstance(events, list) or doc.get("size") != size:
            raise HubError("response_invalid", 502, "the directory log answer has no events")
        out: list[tuple[int, bytes, list[bytes]]] = []
        for item in events:
            if not isinstance(item, dict) or not isinstance(item.get("index"), int):
                raise HubError("response_invalid", 502, "a directory log event is malformed")
            proof = item.get("proof")
            if not isinstance(proof, list):
                raise HubError("response_invalid", 502, "a directory log event has no proof")
            out.append(
                (
                    item["index"],
                    unb64(item.get("entry"), "entry"),
                    [unb64(h, "proof hash") for h in proof],
                )
            )
        return out

    async def envelope(self, packet_id: bytes) -> bytes:
        """An accepted packet's signed envelope, for auditors (never its body)."""
        data: bytes = await self._call(
            "GET", f"/v1/audit/packets/{packet_text(packet_id)}/envelope", raw=True
        )
        return data


def _resume_state(dest: Path, info: BodyInfo) -> tuple[BodyVerifier, int]:
    """A verifier fed with the bytes already downloaded, and how many there are."""
    verifier = BodyVerifier(info)
    try:
        have = dest.stat().st_size
    except FileNotFoundError:
        return verifier, 0
    if have > info.size:
        dest.unlink()
        return BodyVerifier(info), 0
    with dest.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            verifier.feed(chunk)
    return verifier, have


def _sync_file(fh: Any) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
