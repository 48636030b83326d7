"""Session-wide broker: BIOX_AMQP_URL if set, else testcontainers' RabbitMQ when a Docker
engine answers, else the local launcher (Debian's rabbitmq-server as a child)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            params = container.get_connection_params()
            yield (f"amqp://guest:guest@{params.host}:{params.port}/%2F")
        return
    from biox.dev.broker import LocalBroker

    broker = LocalBroker().start()
    try:
        yield broker.url
    finally:
        broker.stop()
