"""A running exchange for integration tests: topology, small galleries, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pika
import pytest
from xdist.scheduler import LoadFileScheduling

from biox.broker.deadletters import DeadLetterQueues, Filters
from biox.broker.topology import declare
from biox.registry import Registry
from biox.routes import ROUTES
from biox.settings import Settings
from biox.sim import encounters, galleries
from biox.sim.processes import Workers, dev_env, start_workers, wait_for_consumers
from biox.trust.sealing import load_ring
from biox.wire import addresses, codec
from biox.wire.codec import Envelope, Outgoing
from tests.integration.ledger import opened

SEED = 4242
SIZE = 3000
CODES = ["mx", "sv", "us"]

# How `make test` spreads these modules over its xdist processes (`--dist loadfile
# --no-loadscope-reorder`): a process that comes free takes the next module, and the
# modules on the session's ``exchange`` go together as one, so that only one process starts
# an exchange. ``--dist loadgroup`` would say that with marks, but it does not group on
# pytest 9.2 (pytest-xdist issue 1386). The longest go first, longest first, so that the
# two processes end close together (`make test` prints each test's time).
ON_EXCHANGE = (
    "test_bad_input",
    "test_exchange",
    "test_fuzz",
    "test_lifecycle",
    "test_operations",
    "test_quotas",
    "test_workflows",
)
LONGEST_FIRST = ("test_sovereign", "exchange", "test_serve", "test_guide", "test_faults")
HERE = Path(__file__).parent


def group_of(path: Path) -> str:
    """``exchange`` for a module of this directory on the shared exchange, else the
    module itself (tests/unit has modules of the same names)."""
    return "exchange" if path.parent.name == HERE.name and path.stem in ON_EXCHANGE else str(path)


class ModulesAndTheExchange(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return group_of(Path(nodeid.split("::", 1)[0]))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileScheduling | None:
    if config.getvalue("dist") != "loadfile":
        return None
    return ModulesAndTheExchange(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first, and ``ON_EXCHANGE`` held to what the tests use: a
    module missing from it would start an exchange of its own in every process."""
    here = {item for item in items if HERE in item.path.parents}
    uses = {item.path.stem for item in here if "exchange" in getattr(item, "fixturenames", ())}
    if missing := sorted(uses - set(ON_EXCHANGE)):
        raise pytest.UsageError(f"tests/integration/conftest.py: add {missing} to ON_EXCHANGE")

    def rank(item: pytest.Item) -> int:
        g = "exchange" if group_of(item.path) == "exchange" else item.path.stem
        return LONGEST_FIRST.index(g) if g in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=lambda item: rank(item) if item in here else len(LONGEST_FIRST))


@dataclass
class Exchange:
    url: str
    settings: Settings
    registry: Registry
    env: dict[str, str]
    workers: Workers
    sizes: dict[str, int]

    def restart(self, name: str) -> None:
        """Start a replacement for worker ``name`` (e.g. after killing it)."""
        code, kind = name.split("-")
        new = start_workers([code], self.env, self.settings.data_dir / "logs", (kind,))
        self.workers.processes = [(n, p) for n, p in self.workers.processes if n != name]
        self.workers.processes.extend(new.processes)
        wait_for_consumers(self.url, [addresses.queue(code, kind)], self.workers)

    def kill(self, name: str) -> None:
        for n, p in self.workers.processes:
            if n == name:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return dict(self.workers.processes)[name]

    def ready(self, queue: str) -> int:
        """Messages waiting in ``queue``; not those delivered to a consumer and unacked."""
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()


_modules = iter(range(1, 10_000))


def databases(postgres: object | None, prefix: str) -> str | None:
    """On PostgreSQL: a database per participant under ``prefix``, as a settings URL."""
    if postgres is None:
        return None
    from biox.dev.postgres import LocalPostgres

    assert isinstance(postgres, LocalPostgres)
    postgres.create_databases(*(f"{prefix}_{code}" for code in CODES))
    return postgres.database_url(f"{prefix}_{{participant}}")


@pytest.fixture(scope="module", autouse=True)
def _databases_of_this_module(postgres: object | None) -> Iterator[None]:
    """On PostgreSQL (``--postgres``): fresh databases per test module, one per participant
    (``BIOX_DATABASE_URL`` with ``{participant}``), as each module gets fresh SQLite files
    under its own data directory otherwise."""
    url = databases(postgres, f"m{next(_modules)}")
    if url is None:
        yield
        return
    saved = os.environ.get("BIOX_DATABASE_URL")
    os.environ["BIOX_DATABASE_URL"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("BIOX_DATABASE_URL", None)
        else:
            os.environ["BIOX_DATABASE_URL"] = saved


@pytest.fixture(scope="session")
def exchange(
    broker_url: str, tmp_path_factory: pytest.TempPathFactory, postgres: object | None
) -> Iterator[Exchange]:
    data = tmp_path_factory.mktemp("exchange")
    settings = Settings(
        amqp_url=broker_url,
        data_dir=data,
        retry_delays="1,2",
        database_url=databases(postgres, "exchange"),  # a session's: its own databases
    )
    registry = Registry.load(settings.registry)
    declare(broker_url, CODES, settings)
    sizes = dict.fromkeys(CODES, SIZE)
    for code in CODES:
        galleries.build_gallery(settings, code, SIZE, SEED)
    env = dev_env(broker_url, settings, CODES)
    workers = start_workers(CODES, env, data / "logs")
    try:
        wait_for_consumers(
            broker_url,
            [addresses.queue(c, role) for c in CODES for role in ROUTES.queues],
            workers,
        )
        yield Exchange(broker_url, settings, registry, env, workers, sizes)
    finally:
        workers.stop()


class Peer:
    """A hand-driven participant for feeding raw (possibly broken) messages to workers.

    A partner kind is signed and sealed with the sending participant's own keys (so the
    body, however broken, reaches the handler's decoding); ``sign=False`` sends it bare.
    """

    def __init__(self, url: str, keys: Path | None = None) -> None:
        self.keys = keys
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def observe(self, exchange: str, routing_key: str) -> str:
        """A private queue receiving a copy of what is routed with this key."""
        name = f"test.observe.{uuid.uuid4().hex[:8]}"
        self.ch.queue_declare(name, exclusive=True)
        self.ch.queue_bind(name, exchange, routing_key)
        return name

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        kind: str | None = "query",
        schema: str | None = "query/1",
        sender: str | None = "us",
        recipient: str | None = "mx",
        message_id: str | None = "auto",
        correlation_id: str | None = None,
        reply_to: str | None = None,
        sign: bool = True,
    ) -> str | None:
        headers: dict[str, object] = {}
        if schema:
            headers["biox-schema"] = schema
        if sender:
            headers["biox-from"] = sender
        if recipient:
            headers["biox-to"] = recipient
        mid = str(uuid.uuid4()) if message_id == "auto" else message_id
        if (
            sign
            and self.keys
            and kind
            and sender
            and recipient
            and (self.keys / sender).is_dir()  # a stranger has no keys to sign with
            and ROUTES.sealed(kind, sender, recipient)
        ):
            env = Envelope(
                mid or "",
                kind,
                schema or "",
                sender,
                recipient,
                correlation_id,
                reply_to,
                headers=headers,
            )
            sealed = load_ring(self.keys, sender).seal(Outgoing(exchange, routing_key, body, env))
            body, headers = sealed.body, sealed.envelope.headers
        self.ch.basic_publish(
            exchange,
            routing_key,
            body,
            pika.BasicProperties(
                message_id=mid,
                type=kind,
                correlation_id=correlation_id,
                reply_to=reply_to,
                delivery_mode=2,
                content_type="application/msgpack",
                headers=headers,
            ),
            mandatory=True,
        )
        return mid

    def take(
        self,
        queue: str,
        count: int = 1,
        timeout: float = 30.0,
        correlation_id: str | None = None,
    ) -> list[tuple[pika.BasicProperties, bytes]]:
        """Up to ``count`` messages from ``queue``; with ``correlation_id``, only those about
        that query (anything else on the queue, a late answer to an earlier test, is not
        taken for this one's)."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                self.conn.sleep(0.1)
                continue
            if correlation_id is None or props.correlation_id == correlation_id:
                got.append((props, self.opened(props, body)))
        return got

    def opened(self, props: pika.BasicProperties, body: bytes) -> bytes:
        """A sealed partner message as its recipient reads it (others as they are)."""
        return opened(self.keys, props, body)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def peer(exchange: Exchange) -> Iterator[Peer]:
    p = Peer(exchange.url, exchange.settings.keys())
    yield p
    p.close()


def unpack(body: bytes) -> dict:
    return msgpack.unpackb(body, timestamp=3)


def wait_dead(exchange: Exchange, queue: str, message_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dlqs = DeadLetterQueues(exchange.url)
        try:
            found = dlqs.find([queue], Filters(ids=(message_id,)))
        finally:
            dlqs.close()
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"{message_id} never reached {queue}")


def send_from_unknown_participant(peer: Peer, query: object) -> str:
    """A well-formed query that claims to come from 'zz', which no registry knows."""
    mid = peer.publish(
        addresses.ingress("mx", "us"),  # on the shared broker, any way in will do
        "mx.query",
        codec.encode_body(query),  # type: ignore[arg-type]
        sender="zz",
        correlation_id=query.query_id,  # type: ignore[attr-defined]
    )
    assert mid
    return mid


@pytest.fixture
def system(exchange: Exchange) -> Iterator[encounters.EncounterSystem]:
    """An encounter system of every participant, collecting its results."""
    with encounters.EncounterSystem(exchange.url, exchange.sizes) as s:
        yield s


@pytest.fixture
def cli_env(exchange: Exchange, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI pointed at the exchange's broker and databases: the shared development
    broker, where everyone is guest (duties are held on the sovereign layout,
    test_sovereign.py)."""
    monkeypatch.setenv("BIOX_AMQP_URL", exchange.url)
    monkeypatch.setenv("BIOX_DEV_SHARED_BROKER", "1")
    monkeypatch.setenv("BIOX_DATA_DIR", str(exchange.settings.data_dir))
    if exchange.settings.database_url:
        monkeypatch.setenv("BIOX_DATABASE_URL", exchange.settings.database_url)
