"""The annual review as one self-contained HTML page: tables and inline SVG charts (volume
per month, outcomes, latency distribution). No script, no web font, nothing fetched: it
opens the same on an air-gapped workstation as in a browser with network."""

from __future__ import annotations

import html
import math
from collections import Counter

from biox.agreement.report import Report

COLORS = {"sent": "#1f5fa8", "answered": "#c8742b"}
STATUS_COLORS = {
    "match": "#2e7d32",
    "no_match": "#607d8b",
    "declined": "#c62828",
    "rejected": "#6a1b9a",
    "pending": "#f9a825",
    "pending_review": "#ef6c00",
    "withdrawn": "#455a64",
    "blocked": "#000000",
}


def e(value: object) -> str:
    return html.escape(str(value))


def _bars_by_month(per_month: dict[str, dict[str, int]]) -> str:
    months = list(per_month) or ["—"]
    top = max([v for m in per_month.values() for v in m.values()] + [1])
    width, height, left, bottom = 640, 220, 40, 30
    slot = (width - left) / len(months)
    bar = max(4.0, slot / 3)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" '
        f'aria-label="queries per month">'
    ]
    for i in range(5):
        y = bottom + (height - 2 * bottom) * i / 4
        value = round(top * (1 - i / 4))
        parts.append(
            f'<line x1="{left}" x2="{width}" y1="{y}" y2="{y}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 4}" class="axis" text-anchor="end">{value}</text>'
        )
    for i, month in enumerate(months):
        x = left + i * slot + slot / 2 - bar
        for j, direction in enumerate(("sent", "answered")):
            v = per_month.get(month, {}).get(direction, 0)
            h = (height - 2 * bottom) * v / top
            parts.append(
                f'<rect x="{x + j * bar:.1f}" y="{height - bottom - h:.1f}" width="{bar - 1:.1f}" '
                f'height="{h:.1f}" fill="{COLORS[direction]}"><title>{e(month)} {direction}: '
                f"{v}</title></rect>"
            )
        parts.append(
            f'<text x="{x + bar:.1f}" y="{height - 10}" class="axis" '
            f'text-anchor="middle">{e(month)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _outcome_bars(outcomes: Counter[str]) -> str:
    rows = outcomes.most_common() or [("none", 0)]
    top = max([v for _, v in rows] + [1])
    width, line = 640, 26
    height = line * len(rows) + 10
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="outcomes">']
    for i, (status, v) in enumerate(rows):
        y = 5 + i * line
        w = (width - 200) * v / top
        color = STATUS_COLORS.get(status, "#888")
        parts.append(
            f'<text x="130" y="{y + 16}" class="axis" text-anchor="end">{e(status)}</text>'
            f'<rect x="140" y="{y}" width="{w:.1f}" height="{line - 6}" fill="{color}"/>'
            f'<text x="{144 + w:.1f}" y="{y + 16}" class="axis">{v}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _latency_histogram(latencies: dict[str, list[float]]) -> str:
    values = [v for vs in latencies.values() for v in vs]
    width, height, left, bottom = 640, 220, 40, 34
    if not values:
        return (
            f'<svg viewBox="0 0 {width} 40" class="chart"><text x="10" y="24" class="axis">'
            "no answered query in the period</text></svg>"
        )
    # log-spaced bins from 10 ms to the slowest answer
    lo, hi = math.log10(0.01), math.log10(max(max(values), 0.02))
    n = 12
    edges = [10 ** (lo + (hi - lo) * i / n) for i in range(n + 1)]
    counts = {d: [0] * n for d in latencies}
    for d, vs in latencies.items():
        for v in vs:
            i = min(n - 1, max(0, int((math.log10(max(v, 0.01)) - lo) / (hi - lo) * n)))
            counts[d][i] += 1
    top = max([c for cs in counts.values() for c in cs] + [1])
    slot = (width - left) / n
    parts = [
        f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" '
        f'aria-label="latency distribution">'
    ]
    for i in range(n):
        x = left + i * slot
        for j, d in enumerate(counts):
            h = (height - 2 * bottom) * counts[d][i] / top
            parts.append(
                f'<rect x="{x + j * slot / 2 + 1:.1f}" y="{height - bottom - h:.1f}" '
                f'width="{slot / 2 - 2:.1f}" height="{h:.1f}" fill="{COLORS.get(d, "#888")}">'
                f"<title>{d}: {counts[d][i]}</title></rect>"
            )
        if i % 2 == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 12}" class="axis">{_seconds(edges[i])}</text>'
            )
    parts.append(
        f'<text x="{width - 2}" y="{height - 12}" class="axis" text-anchor="end">'
        f"{_seconds(edges[-1])}</text>"
        f'<text x="{left - 4}" y="{bottom + 4}" class="axis" text-anchor="end">{top}</text>'
        f'<line x1="{left}" x2="{width}" y1="{bottom}" y2="{bottom}" class="grid"/>'
        f'<line x1="{left}" x2="{width}" y1="{height - bottom}" y2="{height - bottom}" '
        'class="grid"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _pairs(d: dict[str, object] | list[str]) -> str:
    """``{"a": 1}`` as "a 1", for people; nothing as "none"."""
    if isinstance(d, list):
        return ", ".join(d) or "none"
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.0f} min"


def render(report: Report) -> str:
    outcomes: Counter[str] = Counter()
    for f in report.flows:
        outcomes.update(f.outcomes)
    rows = "".join(
        f"<tr><td>{e(f.direction)}</td><td>{e(f.partner)}</td><td>{e(f.purpose)}</td>"
        f"<td class=n>{f.queries}</td><td>{e(', '.join(f'{k} {v}' for k, v in f.outcomes.most_common()))}</td>"
        f"<td>{e(', '.join(f'{k} {v}' for k, v in f.reasons.most_common()))}</td>"
        f"<td>{e(', '.join(f'{k} {v}' for k, v in f.decided_by.most_common()))}</td>"
        f"<td class=n>{e(' / '.join(_seconds(v) for v in f.latency_s.values()) or '—')}</td></tr>"
        for f in report.flows
    )
    refusals = (
        "".join(f"<tr><td>{e(k)}</td><td class=n>{v}</td></tr>" for k, v in report.refusals.items())
        or "<tr><td colspan=2>none</td></tr>"
    )
    review, notices = report.review, report.notices
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>biox annual review: {e(report.participant)} {report.start:%Y-%m-%d} to {report.end:%Y-%m-%d}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
h1 {{ font-size: 1.5em; margin-bottom: .2em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; width: 100%; }} td, th {{ border-bottom: 1px solid #ddd;
padding: .3em .5em; text-align: left; vertical-align: top; }} td.n {{ text-align: right; }}
.chart {{ width: 100%; max-width: 640px; height: auto; display: block; }}
.grid {{ stroke: #e4e4e4; }} .axis {{ font-size: 11px; fill: #555; }}
.key span {{ display: inline-block; width: .9em; height: .9em; margin: 0 .3em 0 1em; }}
.meta {{ color: #666; }}
</style></head><body>
<h1>Annual review (§27): {e(report.participant)}</h1>
<p class="meta">{report.start:%Y-%m-%d} to {report.end:%Y-%m-%d} (UTC), from {e(report.participant)}'s own records.
Queries sent: {sum(f.queries for f in report.flows if f.direction == "sent")};
queries answered: {sum(f.queries for f in report.flows if f.direction == "answered")}.</p>
<h2>Volume per month</h2>
<p class="key"><span style="background:{COLORS["sent"]}"></span>sent
<span style="background:{COLORS["answered"]}"></span>answered</p>
{_bars_by_month(report.per_month)}
<h2>Outcomes</h2>
{_outcome_bars(outcomes)}
<h2>Timeliness: time to an answer</h2>
<p class="key"><span style="background:{COLORS["sent"]}"></span>our queries (round trip)
<span style="background:{COLORS["answered"]}"></span>partners' queries (our answer)</p>
{_latency_histogram(report.latencies_s)}
<h2>Per partner and purpose</h2>
<table><tr><th>direction</th><th>partner</th><th>purpose</th><th>queries</th><th>outcomes</th>
<th>reasons</th><th>decided by</th><th>p50 / p95 / p99</th></tr>{rows}</table>
<h2>Refusals by reason</h2>
<table><tr><th>reason</th><th>count</th></tr>{refusals}</table>
<h2>Human review (§8)</h2>
<table><tr><th>cases</th><th>by status</th><th>by examiner</th><th>hours to decide</th><th>hours open</th></tr>
<tr><td class=n>{review["cases"]}</td><td>{e(_pairs(review["by_status"]))}</td><td>{e(_pairs(review["by_examiner"]))}</td>
<td>{e(_pairs(review["hours_to_decide"]))}</td><td>{e(_pairs(review["open_hours"]))}</td></tr></table>
<h2>Notices (§12-36)</h2>
<table><tr><th>notices</th><th>by type</th><th>by status</th><th>overdue</th></tr>
<tr><td class=n>{notices["count"]}</td><td>{e(_pairs(notices["by_type"]))}</td><td>{e(_pairs(notices["by_status"]))}</td>
<td>{e(_pairs(notices["overdue"]))}</td></tr></table>
</body></html>
"""
