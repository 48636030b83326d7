"""The annual review page as a person sees it: opened in Debian's headless Chromium, its
charts laid out with bars of the right count, and photographed (docs/report.png is this
test's picture; BIOX_UPDATE_DOCS=1 writes it again)."""

from __future__ import annotations

import os
import re
import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from biox.agreement import report
from biox.agreement.report_page import render
from biox.dev import browser
from tests.unit.test_workflows import encounter, make_hub, person_known_to

pytestmark = pytest.mark.browser


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_report_page_renders_its_charts_in_chromium(tmp_path):
    hub = make_hub(tmp_path / "hub")
    outs = [encounter("us", person_known_to("mx", derogatory=False)) for _ in range(4)]
    outs += [encounter("us", 10_000 + i) for i in range(3)]
    outs += [encounter("mx", person_known_to("us", derogatory=False)) for _ in range(2)]
    hub.run(outs)
    with hub.session("us") as s:
        now = datetime.now(UTC)
        rep = report.build(s, "us", now - timedelta(days=365), now + timedelta(days=1))
    page = tmp_path / "report.html"
    page.write_text(render(rep))

    dom = browser.dom(page)
    assert dom.count("<svg") == 3
    assert re.search(r"Queries sent: 14;\s+queries answered: 2\.", dom)
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([0-9.]+)"', dom)]
    assert sum(1 for h in heights if h > 0) >= 5  # bars drawn, not an empty frame
    assert re.search(r"<td>sent</td><td>mx</td><td>enforce</td><td class=\"n\">7</td>", dom)

    shot = browser.screenshot(page, tmp_path / "report.png")
    assert png_size(shot) == (1100, 1500) and shot.stat().st_size > 20_000
    if os.environ.get("BIOX_UPDATE_DOCS"):
        shutil.copy(shot, Path("docs/report.png"))
