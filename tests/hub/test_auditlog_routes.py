"""The ``/v1/log`` API on SQLite and PostgreSQL: answers, proofs, bundles, cosignatures,
roles and refusals (never a 500 for bad input)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
import pytest_asyncio
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from hub.auditlog import append_event
from hub.auditlog.app import LOG_RUNTIME, setup_auditlog
from hub.auditlog.routes import Caller
from hub.auditlog.sequencer import Sequencer
from hub.db import make_sessionmaker
from protocol.bundle import log_verifier, verify_bundle, witness_signer, witness_verifier
from protocol.checkpoint import (
    Checkpoint,
    CosignatureVerifier,
    NoteSigner,
    add_cosignature,
    check_consistent,
    open_checkpoint,
    sign_checkpoint,
    verify_cosignatures,
)
from protocol.errors import RemoteError
from protocol.keys import SigningPrivateKey
from protocol.merkle import leaf_hash, verify_inclusion

from .test_auditlog_support import (
    BACKENDS,
    append_fetched,
    empty_log,
    log_engine,
    module_database,
)

pytestmark = pytest.mark.asyncio
Client = TestClient[web.Request, web.Application]

ORIGIN = "lienthong.hub/test"
KEY = SigningPrivateKey.generate()
VERIFIER = log_verifier(KEY.public_key(), ORIGIN)
SENDER, RECIPIENT, OTHER, AUDITOR = "000.00.00.H41", "000.00.01.H41", "000.00.02.H41", "AUD.01"
OFFICE_KEYS = {code: SigningPrivateKey.generate() for code in (SENDER, RECIPIENT, OTHER)}
AUDITOR_KEY = SigningPrivateKey.generate()


@dataclass(frozen=True)
class FakeCaller:
    organ: str
    role: str
    kid: bytes | None = None


TOKENS = {
    "t-sender": FakeCaller(SENDER, "office"),
    "t-recipient": FakeCaller(RECIPIENT, "office"),
    "t-other": FakeCaller(OTHER, "office"),
    "t-auditor": FakeCaller(AUDITOR, "auditor"),
    "t-admin": FakeCaller("ADMIN", "admin"),
}


async def fake_authorize(request: web.Request, roles: frozenset[str]) -> Caller:
    header = request.headers.get("Authorization")
    if header is None:
        raise RemoteError("token_missing")
    caller = TOKENS.get(header.removeprefix("Bearer "))
    if caller is None:
        raise RemoteError("token_invalid")
    if caller.role not in roles:
        raise RemoteError("role_forbidden")
    return caller


async def fake_witness_keys(caller: Caller) -> list[CosignatureVerifier]:
    if caller.organ == AUDITOR:
        return [witness_verifier(AUDITOR, AUDITOR_KEY.public_key())]
    key = OFFICE_KEYS.get(caller.organ)
    return [] if key is None else [witness_verifier(caller.organ, key.public_key())]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from module_database()


@pytest_asyncio.fixture
async def engine(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    async with empty_log(backend, tmp_path, pg) as url, log_engine(url) as value:
        yield value


@pytest_asyncio.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[Client]:
    app = web.Application()
    setup_auditlog(
        app,
        engine=engine,
        key=KEY,
        origin=ORIGIN,
        authorize=fake_authorize,
        witness_keys=fake_witness_keys,
        run_sequencer=False,
    )
    async with TestClient(TestServer(app)) as value:
        yield value


@pytest.fixture
def seq(engine: AsyncEngine) -> Sequencer:
    return Sequencer(engine, KEY, ORIGIN)


PACKET = uuid.UUID(int=0x0190_0000_0000_7000_8000_0000_0000_0001).bytes


async def log_packet(engine: AsyncEngine, packet_id: bytes = PACKET) -> None:
    """The events of one packet from SENDER to RECIPIENT and OTHER, among other traffic."""
    maker = make_sessionmaker(engine)
    digest = os.urandom(32)
    async with maker.begin() as s:
        await append_event(
            s,
            "packet_accepted",
            1_750_000_000,
            packet_id=packet_id,
            envelope_digest=digest,
            sender=SENDER,
            recipients=[RECIPIENT, "000.00.03.H41"],
            packet_kind="document",
            urgency=1,
            secrecy=0,
            created=1_749_999_990,
            body_size=1234,
            body_sha256=os.urandom(32),
            transport="http",
        )
    await append_fetched(engine, 5)
    async with maker.begin() as s:
        await append_event(
            s,
            "body_fetched",
            1_750_000_100,
            packet_id=packet_id,
            envelope_digest=digest,
            organ=RECIPIENT,
        )
        await append_event(
            s,
            "receipt",
            1_750_000_200,
            packet_id=packet_id,
            envelope_digest=digest,
            organ=RECIPIENT,
            status="01",
            receipt=b"signed receipt bytes",
        )


async def problem_code(resp: ClientResponse) -> tuple[int, str]:
    body = await resp.json()
    assert resp.content_type == "application/problem+json"
    return resp.status, body["code"]


# --- the public checkpoint ----------------------------------------------------------------


async def test_checkpoint_is_public_text(client: Client, seq: Sequencer) -> None:
    resp = await client.get("/v1/log/checkpoint")
    assert resp.status == 503  # nothing signed yet: the sequencer has not run
    await seq.sequence_once()
    resp = await client.get("/v1/log/checkpoint")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    cp = open_checkpoint((await resp.read()), VERIFIER)
    assert cp.size == 0
    assert resp.headers["X-Tree-Size"] == "0"


async def test_checkpoint_of_a_size(client: Client, engine: AsyncEngine, seq: Sequencer) -> None:
    await append_fetched(engine, 3)
    await seq.sequence_once()
    await append_fetched(engine, 4)
    await seq.sequence_once()
    old = open_checkpoint(await (await client.get("/v1/log/checkpoint?size=3")).read(), VERIFIER)
    new = open_checkpoint(await (await client.get("/v1/log/checkpoint")).read(), VERIFIER)
    assert (old.size, new.size) == (3, 7)
    resp = await client.get("/v1/log/proof/consistency?old=3&new=7", headers=auth("t-auditor"))
    proof = [base64.b64decode(h) for h in (await resp.json())["proof"]]
    check_consistent(old, new, proof)
    assert await problem_code(await client.get("/v1/log/checkpoint?size=5")) == (
        400,
        "tree_size_invalid",
    )
    for query in ("size=x", "size=-1", "size=1&size=2", "size=3&min_cosignatures=1"):
        assert await problem_code(await client.get(f"/v1/log/checkpoint?{query}")) == (
            400,
            "request_invalid",
        )


# --- entries and proofs -------------------------------------------------------------------


async def test_auditor_verifies_entries_against_checkpoint(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
) -> None:
    await append_fetched(engine, 37)
    await seq.sequence_once()
    cp = open_checkpoint(await (await client.get("/v1/log/checkpoint")).read(), VERIFIER)
    resp = await client.get("/v1/log/entries?start=0&end=100", headers=auth("t-auditor"))
    assert resp.status == 200
    doc = await resp.json()
    assert doc["start"] == 0
    got = [base64.b64decode(e) for e in doc["entries"]]
    assert len(got) == 37  # clamped to the tree
    for index in (0, 17, 36):
        resp = await client.get(
            f"/v1/log/proof/inclusion?index={index}&size={cp.size}", headers=auth("t-sender")
        )
        doc = await resp.json()
        assert (doc["index"], doc["size"]) == (index, cp.size)
        proof = [base64.b64decode(h) for h in doc["proof"]]
        verify_inclusion(leaf_hash(got[index]), index, cp.size, proof, cp.root_hash)
    cbor = await client.get(
        "/v1/log/entries?start=10&end=12",
        headers={**auth("t-auditor"), "Accept": "application/cbor"},
    )
    assert cbor.content_type == "application/cbor"
    assert cbor2.loads(await cbor.read()) == {"start": 10, "entries": got[10:12]}
    cbor = await client.get(
        "/v1/log/proof/inclusion?index=3&size=37",
        headers={**auth("t-auditor"), "Accept": "application/cbor"},
    )
    doc = cbor2.loads(await cbor.read())
    verify_inclusion(leaf_hash(got[3]), 3, 37, doc["proof"], cp.root_hash)


async def test_entries_are_paged(client: Client, engine: AsyncEngine, seq: Sequencer) -> None:
    await append_fetched(engine, 1200)
    await seq.sequence_once()
    doc = await (
        await client.get("/v1/log/entries?start=5&end=1200", headers=auth("t-auditor"))
    ).json()
    assert len(doc["entries"]) == 1000
    doc = await (
        await client.get("/v1/log/entries?start=1005&end=5000", headers=auth("t-auditor"))
    ).json()
    assert len(doc["entries"]) == 195


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/log/entries", (400, "request_invalid")),
        ("/v1/log/entries?start=0", (400, "request_invalid")),
        ("/v1/log/entries?start=a&end=2", (400, "request_invalid")),
        ("/v1/log/entries?start=-1&end=2", (400, "request_invalid")),
        ("/v1/log/entries?start=+1&end=2", (400, "request_invalid")),
        ("/v1/log/entries?start=1&start=0&end=2", (400, "request_invalid")),
        ("/v1/log/entries?start=0&end=99999999999999999999", (400, "request_invalid")),
        ("/v1/log/entries?start=0&end=9223372036854775808", (400, "request_invalid")),
        ("/v1/log/entries?start=3&end=3", (400, "tree_size_invalid")),
        ("/v1/log/entries?start=4&end=2", (400, "tree_size_invalid")),
        ("/v1/log/entries?start=4&end=9223372036854775807", (400, "tree_size_invalid")),
        ("/v1/log/proof/inclusion?index=0", (400, "request_invalid")),
        ("/v1/log/proof/inclusion?index=4&size=4", (400, "tree_size_invalid")),
        ("/v1/log/proof/inclusion?index=0&size=5", (400, "tree_size_invalid")),
        ("/v1/log/proof/inclusion?index=0&size=0", (400, "tree_size_invalid")),
        ("/v1/log/proof/inclusion?index=x&size=1", (400, "request_invalid")),
        ("/v1/log/proof/consistency?old=3&new=2", (400, "tree_size_invalid")),
        ("/v1/log/proof/consistency?old=1&new=5", (400, "tree_size_invalid")),
        ("/v1/log/proof/consistency?old=1", (400, "request_invalid")),
        ("/v1/log/proof/consistency?old=1.0&new=2", (400, "request_invalid")),
        ("/v1/log/packets/zz/bundle", (400, "packet_id_invalid")),
        ("/v1/log/packets/" + "0" * 31 + "/bundle", (400, "packet_id_invalid")),
        ("/v1/log/packets/" + "0" * 32 + "/bundle", (404, "packet_unknown")),
        ("/v1/log/packets/" + "0" * 32 + "/bundle?size=2", (400, "tree_size_invalid")),
        ("/v1/log/packets/" + "0" * 32 + "/bundle?size=x", (400, "request_invalid")),
    ],
)
async def test_bad_parameters(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
    path: str,
    expected: tuple[int, str],
) -> None:
    await append_fetched(engine, 4)
    await seq.sequence_once()
    assert await problem_code(await client.get(path, headers=auth("t-auditor"))) == expected


async def test_no_query_makes_a_500(client: Client, engine: AsyncEngine, seq: Sequencer) -> None:
    await append_fetched(engine, 9)
    await seq.sequence_once()
    values = [
        "",
        "0",
        "1",
        "8",
        "9",
        "10",
        "-0",
        "1e3",
        "0x10",
        "١",
        "9" * 19,
        "9" * 30,
        "%00",
        " 1",
    ]
    paths = [
        "/v1/log/entries?start={}&end={}",
        "/v1/log/proof/inclusion?index={}&size={}",
        "/v1/log/proof/consistency?old={}&new={}",
        "/v1/log/checkpoint?size={}&x={}",
    ]
    for path in paths:
        for a in values:
            for b in values[:6]:
                resp = await client.get(path.format(a, b), headers=auth("t-auditor"))
                assert resp.status < 500, (path, a, b)
                await resp.read()


# --- roles --------------------------------------------------------------------------------


ENDPOINTS = [
    ("GET", "/v1/log/entries?start=0&end=1"),
    ("GET", "/v1/log/proof/inclusion?index=0&size=1"),
    ("GET", "/v1/log/proof/consistency?old=0&new=1"),
    ("GET", f"/v1/log/packets/{PACKET.hex()}/bundle"),
    ("POST", "/v1/log/cosignatures"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, (401, "token_missing")),
        ("nonsense", (401, "token_invalid")),
        ("t-admin", (403, "role_forbidden")),
    ],
)
async def test_refused_callers(
    client: Client,
    method: str,
    path: str,
    token: str | None,
    expected: tuple[int, str],
) -> None:
    headers = {} if token is None else auth(token)
    resp = await client.request(method, path, headers=headers, data=b"x")
    assert await problem_code(resp) == expected


async def test_bundle_only_for_parties_and_auditors(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
) -> None:
    await log_packet(engine)
    await log_packet(engine, uuid.uuid4().bytes)
    await seq.sequence_once()
    for token in ("t-auditor", "t-sender", "t-recipient"):
        for form in (PACKET.hex(), str(uuid.UUID(bytes=PACKET)), PACKET.hex().upper()):
            resp = await client.get(f"/v1/log/packets/{form}/bundle", headers=auth(token))
            assert resp.status == 200, token
            assert resp.content_type == "application/cbor"
            events = verify_bundle(await resp.read(), VERIFIER)
            assert [e.kind for e in events] == ["packet_accepted", "body_fetched", "receipt"]
    resp = await client.get(f"/v1/log/packets/{PACKET.hex()}/bundle", headers=auth("t-other"))
    assert await problem_code(resp) == (404, "packet_unknown")


async def test_bundle_against_an_older_checkpoint(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
) -> None:
    await log_packet(engine)
    await seq.sequence_once()
    first = int((await client.get("/v1/log/checkpoint")).headers["X-Tree-Size"])
    await log_packet(engine)  # the same packet id again: more events
    await seq.sequence_once()
    path = f"/v1/log/packets/{PACKET.hex()}/bundle"
    old = await client.get(f"{path}?size={first}", headers=auth("t-auditor"))
    assert old.headers["X-Tree-Size"] == str(first)
    assert len(verify_bundle(await old.read(), VERIFIER)) == 3
    new = await client.get(path, headers=auth("t-auditor"))
    assert len(verify_bundle(await new.read(), VERIFIER)) == 6


# --- witnesses ----------------------------------------------------------------------------


async def test_witness_cosigns_and_checkpoint_carries_it(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
) -> None:
    await append_fetched(engine, 5)
    await seq.sequence_once()
    note = await (await client.get("/v1/log/checkpoint")).read()
    now = int(time.time())
    cosigned = add_cosignature(note, witness_signer(RECIPIENT, OFFICE_KEYS[RECIPIENT]), now)
    resp = await client.post("/v1/log/cosignatures", data=cosigned, headers=auth("t-recipient"))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"size": 5, "witnesses": [f"lienthong.witness/{RECIPIENT}"]}
    # idempotent, and a second witness (an auditor) too
    resp = await client.post("/v1/log/cosignatures", data=cosigned, headers=auth("t-recipient"))
    assert resp.status == 200
    cosigned2 = add_cosignature(note, witness_signer(AUDITOR, AUDITOR_KEY), now)
    resp = await client.post("/v1/log/cosignatures", data=cosigned2, headers=auth("t-auditor"))
    assert resp.status == 200
    published = await (await client.get("/v1/log/checkpoint")).read()
    witnesses = [
        witness_verifier(RECIPIENT, OFFICE_KEYS[RECIPIENT].public_key()),
        witness_verifier(AUDITOR, AUDITOR_KEY.public_key()),
    ]
    assert sorted(verify_cosignatures(published, witnesses, 2)) == sorted(v.name for v in witnesses)
    assert open_checkpoint(published, VERIFIER).size == 5
    # a newer checkpoint has no cosignature yet; min_cosignatures finds the cosigned one
    await append_fetched(engine, 2)
    await seq.sequence_once()
    latest = await (await client.get("/v1/log/checkpoint")).read()
    assert open_checkpoint(latest, VERIFIER).size == 7
    resp = await client.get("/v1/log/checkpoint?min_cosignatures=2")
    assert verify_cosignatures(await resp.read(), witnesses, 2)
    resp = await client.get("/v1/log/checkpoint?min_cosignatures=3")
    assert await problem_code(resp) == (400, "tree_size_invalid")


async def test_bad_cosignatures(
    client: Client,
    engine: AsyncEngine,
    seq: Sequencer,
) -> None:
    await append_fetched(engine, 5)
    await seq.sequence_once()
    note = await (await client.get("/v1/log/checkpoint")).read()
    now = int(time.time())
    # signed by another office's key than the caller's
    other = add_cosignature(note, witness_signer(OTHER, OFFICE_KEYS[OTHER]), now)
    resp = await client.post("/v1/log/cosignatures", data=other, headers=auth("t-recipient"))
    assert await problem_code(resp) == (422, "cosignature_invalid")
    # the caller's key name but a wrong signature
    good = add_cosignature(note, witness_signer(RECIPIENT, OFFICE_KEYS[RECIPIENT]), now)
    tampered = good[:-10] + (b"A" if good[-10:-9] != b"A" else b"B") + good[-9:]
    resp = await client.post("/v1/log/cosignatures", data=tampered, headers=auth("t-recipient"))
    assert (await problem_code(resp))[1] in ("cosignature_invalid", "checkpoint_malformed")
    # dated in the future
    future = add_cosignature(note, witness_signer(RECIPIENT, OFFICE_KEYS[RECIPIENT]), now + 3600)
    resp = await client.post("/v1/log/cosignatures", data=future, headers=auth("t-recipient"))
    assert await problem_code(resp) == (422, "cosignature_invalid")
    # a checkpoint this log never signed
    forged = sign_checkpoint(Checkpoint(ORIGIN, 5, bytes(32)), NoteSigner.generate(ORIGIN))
    forged = add_cosignature(forged, witness_signer(RECIPIENT, OFFICE_KEYS[RECIPIENT]), now)
    resp = await client.post("/v1/log/cosignatures", data=forged, headers=auth("t-recipient"))
    assert await problem_code(resp) == (400, "checkpoint_malformed")
    for body in (b"", b"garbage", b"\xff" * 100):
        resp = await client.post("/v1/log/cosignatures", data=body, headers=auth("t-recipient"))
        assert await problem_code(resp) == (400, "checkpoint_malformed")
    resp = await client.post(
        "/v1/log/cosignatures", data=b"x" * (65 * 1024), headers=auth("t-recipient")
    )
    assert await problem_code(resp) == (413, "size_limit_exceeded")
    # an organ without a key to cosign with
    TOKENS["t-nokey"] = FakeCaller("NOKEY", "office")
    try:
        resp = await client.post("/v1/log/cosignatures", data=good, headers=auth("t-nokey"))
        assert await problem_code(resp) == (403, "role_forbidden")
    finally:
        del TOKENS["t-nokey"]
    published = await (await client.get("/v1/log/checkpoint")).read()
    assert published == note  # nothing was stored


# --- the sequencer task -------------------------------------------------------------------


async def test_setup_runs_and_stops_the_sequencer(engine: AsyncEngine) -> None:
    app = web.Application()
    setup_auditlog(
        app,
        engine=engine,
        key=KEY,
        origin=ORIGIN,
        authorize=fake_authorize,
        sequencer_options={"interval": 0.05},
    )
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/v1/log/checkpoint")
        assert resp.status == 200  # the empty tree was signed at startup
        await append_fetched(engine, 3)
        deadline = time.monotonic() + 5
        while True:
            cp = open_checkpoint(await (await client.get("/v1/log/checkpoint")).read(), VERIFIER)
            if cp.size == 3:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        runtime = app[LOG_RUNTIME]
        assert runtime.task is not None
        assert not runtime.task.done()
        task = runtime.task
    assert task.cancelled()
    assert runtime.sequencer is None


async def test_packet_parties() -> None:
    from hub.auditlog.store import packet_parties
    from protocol.audit import encode_event

    pid, digest = PACKET, bytes(32)
    accepted = encode_event(
        "packet_accepted",
        1,
        packet_id=pid,
        envelope_digest=digest,
        sender=SENDER,
        recipients=[RECIPIENT],
        packet_kind="document",
        urgency=0,
        secrecy=0,
        created=1,
        body_size=1,
        body_sha256=digest,
        transport="http",
    )
    # the successor of a merged recipient fetches and answers: a party by its events
    fetched = encode_event("body_fetched", 2, packet_id=pid, envelope_digest=digest, organ=OTHER)
    refused = encode_event("policy_refused", 3, sender="X.1", code="route_not_allowed")
    assert packet_parties([accepted]) == {SENDER, RECIPIENT}
    assert packet_parties([accepted, fetched]) == {SENDER, RECIPIENT, OTHER}
    assert packet_parties([refused]) == {"X.1"}
