"""`make test` runs the unit suite a second time with the wall clock a year ahead
(`--clock-ahead 365`, tests/conftest.py), spread over two processes by pytest-xdist: this
checks that the clock really moved in the process running the tests, not only in the
one that collected them."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime


def test_the_clock_the_suite_reads_is_as_far_ahead_as_asked(request, tmp_path):
    days = request.config.getoption("--clock-ahead")
    marker = tmp_path / "now"
    marker.write_bytes(b"")
    kernel = os.stat(marker).st_mtime  # the file system's clock: time-machine leaves it be
    ahead = time.time() - kernel
    assert abs(ahead - days * 86400) < 3600, (days, ahead)
    assert abs(datetime.now(UTC).timestamp() - time.time()) < 60
