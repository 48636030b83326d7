"""A worker whose handler kills its own process on a poison body (for the delivery-limit test).

Runs the real consume loop; only the handler is a test double.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence

from biox.broker.consumer import ConsumeLoop
from biox.handlers.base import Effects, Handler
from biox.routes import Queue, RouteTable
from biox.settings import Settings
from biox.trust.sealing import memory_rings
from biox.wire.inbound import Inbound


class CrashHandler(Handler):
    """Takes every message undecoded, like the audit queue's handler."""

    def handle(self, batch: Sequence[Inbound], session: object) -> list[Effects]:
        if any(inb.body == b"boom" for inb in batch):
            os._exit(13)  # no ack ever comes: only the broker's delivery limit can stop this
        return [Effects(outcome="ok") for _ in batch]


if __name__ == "__main__":
    url, queue, database = sys.argv[1:4]
    participant, role = queue.split(".", 1)
    settings = Settings(prefetch=1, batch_max=1, retry_delays="1", dev_shared_broker=True)
    spec = Queue(role, CrashHandler, undecoded=CrashHandler.handle)  # type: ignore[arg-type]
    loop = ConsumeLoop(
        url=url,
        participant=participant,
        queue=spec,
        routes=RouteTable([spec], []),
        handler=CrashHandler(),
        database_url=database,
        settings=settings,
        keys=memory_rings([participant])[participant],  # it takes nothing sealed
    )
    loop.run(threading.Event())
