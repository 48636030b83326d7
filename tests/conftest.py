"""Session-wide broker: BIOX_AMQP_URL if set, else testcontainers' RabbitMQ when a Docker
engine answers, else the local launcher (Debian's rabbitmq-server as a child)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--postgres",
        action="store_true",
        help="integration tests on a throwaway PostgreSQL (Debian's postgresql, started "
        "like the broker): each test module gets databases of its own",
    )
    parser.addoption(
        "--clock-ahead",
        type=int,
        default=0,
        metavar="DAYS",
        help="run with the wall clock (datetime.now, time.time) moved this many days ahead, "
        "ticking: a test that pins a date while the code reads the real clock fails today, "
        "not on the day it stops passing (make test runs the unit suite a year ahead)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Every participant as after the readiness exchange (``tests/registry.py``).

    The clock moved for the whole session, in process: time-machine patches the wall
    clock at the C level and leaves the monotonic clock alone, so timeouts, sleeps and lock
    waits behave (libfaketime's interposed lock waits hang Python 3.11's threads)."""
    from tests.registry import install

    install()
    # the suite's own state directory (each xdist worker its own): a test that takes
    # Settings' default data_dir must neither write into ~/.local/state/biox nor meet what
    # another run, or the other worker, left there (a purge found a snapshot there busy)
    state = tempfile.mkdtemp(prefix="biox-state-")
    atexit.register(shutil.rmtree, state, True)
    os.environ["XDG_STATE_HOME"] = state
    days = config.getoption("--clock-ahead")
    if days:
        from datetime import UTC, datetime, timedelta

        import time_machine

        traveller = time_machine.travel(datetime.now(UTC) + timedelta(days=days), tick=True)
        traveller.start()
        config.add_cleanup(traveller.stop)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    if os.environ.get("BIOX_AMQP_URL"):
        yield os.environ["BIOX_AMQP_URL"]
        return
    if _docker_answers():
        from testcontainers.rabbitmq import RabbitMqContainer

        from biox.settings import Settings

        # the same body limit as the local launcher's and a participant's own broker
        limit = f"-rabbit max_message_size {Settings().max_message_bytes}"
        container = RabbitMqContainer("rabbitmq:3.13-management").with_env(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", limit
        )
        with container:
            params = container.get_connection_params()
            yield (f"amqp://guest:guest@{params.host}:{params.port}/%2F")
        return
    from biox.dev.broker import LocalBroker

    broker = LocalBroker().start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[object | None]:
    """With ``--postgres``: one server for the session (src/biox/dev/postgres.py)."""
    if not request.config.getoption("--postgres"):
        yield None
        return
    from biox.dev.postgres import LocalPostgres

    server = LocalPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _structlog_left_as_found() -> Iterator[None]:
    """A test that starts a worker's set-up configures structlog process-wide, with the
    stream pytest captured for that test; put it back, so that no later test (nor a second
    in-process session, as mutmut runs) logs into a closed stream."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()
