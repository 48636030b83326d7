"""`make evaluate`: decision quality on the hard population, as an open-set 1:N evaluation.

1. Calibrate (``gallery/calibration.py``) on a gallery of its own (``--calibration-size``,
   seed A) with probes of its own.
2. At each size in ``--sizes``, build a second, independent gallery (seed B) twice, with
   exact search and with the index the matcher would configure at that size, and search
   held-out probes (mated: a fresh capture of a gallery person; non-mated: strangers, some
   of them look-alikes of a gallery person) through ``Gallery.candidates`` and
   ``Gallery.compare``, the matcher's own code.
3. Score every probe with each rule: each modality alone, today's mean rule, and the sum
   of log-LRs. Report FNIR at FPIR 1 %, 0.1 %, 0.01 % (a mated probe is found when its
   mate is ranked first at or above the threshold), rank-1 and rank-10 identification
   rates, what the calibrated thresholds give against what they promised, the review
   band, and the approximate index against exact search.
4. With ``--scan-shares``, search the configured index again at each share of its IVF
   lists and report FNIR against exact search and the CPU of finding candidates (one thread,
   as the matcher searches): what choosing ``SCAN_SHARE`` or ``BIOX_IVF_NPROBE`` rests on.

Writes bench/results/evaluation.json, docs/det.png and the tables in docs/matching.md
between the evaluation markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.progress import Progress

from biox.gallery.calibration import Calibration, fit
from biox.gallery.fusion import MeanRule, Scorer
from biox.gallery.gallery import Gallery
from biox.settings import Settings
from biox.sim.population import Population, Probes, build, score_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "matching.md"
PLOT = ROOT / "docs" / "det.png"
FPIRS = (0.01, 0.001, 0.0001)
RULES = ("face", "finger", "iris", "mean rule", "log-LR sum")
console = Console()


@dataclass
class Scored:
    """Per probe and rule: the best score, the best candidate, and the mate's rank."""

    best: dict[str, np.ndarray]
    top: dict[str, np.ndarray]
    rank: dict[str, np.ndarray]  # the mate's rank among candidates (1 = first), 0 = absent
    has: dict[str, np.ndarray]  # whether the probe carries the rule's modality
    search_ms: float  # CPU per probe finding candidates (``Gallery.candidates``)


def only(raw: dict[str, np.ndarray], modality: str) -> dict[str, np.ndarray]:
    return {e: v for e, v in raw.items() if e.split(".", 1)[0] == modality}


def score(gallery: Gallery, sample: Probes, calibration: Calibration, k: int) -> Scored:
    llr, mean = calibration.scorer(), MeanRule()
    rules: dict[str, tuple[Scorer, str | None]] = {
        "face": (llr, "face"),
        "finger": (llr, "finger"),
        "iris": (llr, "iris"),
        "mean rule": (mean, None),
        "log-LR sum": (llr, None),
    }
    n = len(sample.probes)
    best = {r: np.full(n, -np.inf) for r in rules}
    top = {r: np.full(n, -1, np.int64) for r in rules}
    rank = {r: np.zeros(n, np.int64) for r in rules}
    has = {r: np.ones(n, bool) for r in rules}
    searching = 0.0
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"searching {n} probes", total=n)
        for start in range(0, n, 256):
            chunk = sample.probes[start : start + 256]
            began = time.process_time()
            candidates = gallery.candidates(chunk, k)
            searching += time.process_time() - began
            for i, (probe, ids) in enumerate(zip(chunk, candidates, strict=True)):
                row = start + i
                if not len(ids):
                    continue
                raw = gallery.compare(probe, ids)
                for rule, (scorer, modality) in rules.items():
                    part = only(raw, modality) if modality else raw
                    if modality and not part:
                        has[rule][row] = False
                        continue
                    fused = scorer(part).score
                    order = np.argsort(-fused, kind="stable")
                    best[rule][row] = fused[order[0]]
                    top[rule][row] = ids[order[0]]
                    mate = sample.mate[row]
                    if mate >= 0:
                        where = np.flatnonzero(ids[order] == mate)
                        rank[rule][row] = int(where[0]) + 1 if len(where) else 0
            bar.advance(task, len(chunk))
    return Scored(best, top, rank, has, round(searching * 1000 / max(n, 1), 3))


def rates(s: Scored, sample: Probes, rule: str, threshold: float) -> tuple[float, float]:
    """(FPIR, FNIR) at ``threshold``: FNIR counts a mated probe found when its mate is
    first and at or above the threshold. A single modality's rates are over the probes
    that carry it (a face-only rule is not asked about a probe with no face)."""
    mated = (sample.mate >= 0) & s.has[rule]
    impostor = (sample.mate < 0) & s.has[rule]
    found = (s.rank[rule] == 1) & (s.best[rule] >= threshold)
    fpir = float((s.best[rule][impostor] >= threshold).mean())
    return fpir, float(1 - found[mated].mean())


def fnir_at(s: Scored, sample: Probes, rule: str, fpir: float) -> tuple[float, float]:
    """FNIR at the empirical threshold giving ``fpir`` on these non-mated probes."""
    impostors = np.sort(s.best[rule][(sample.mate < 0) & s.has[rule]])[::-1]
    allowed = int(np.floor(fpir * len(impostors)))
    t = impostors[allowed] + 1e-6 if allowed < len(impostors) else -np.inf
    return t, rates(s, sample, rule, t)[1]


def det(s: Scored, sample: Probes, rule: str) -> tuple[np.ndarray, np.ndarray]:
    mated = sample.mate >= 0
    ts = np.unique(
        np.quantile(
            s.best[rule][~mated][np.isfinite(s.best[rule][~mated])], np.linspace(0.5, 1, 400)
        )
    )
    points = np.array([rates(s, sample, rule, t) for t in ts])
    return points[:, 0], points[:, 1]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    started = time.monotonic()
    pop_cal = Population(args.seed)
    truth = pop_cal.truth(args.calibration_size)
    gallery = Gallery("flat")
    build(pop_cal, truth, gallery)
    sample = pop_cal.probes(truth, args.calibration_mated, args.calibration_non_mated, stream=1)
    console.print(
        f"calibrating on {args.calibration_size:,} identities, {len(sample.probes):,} probes"
    )
    table = score_table(gallery, sample, settings.candidates, args.seed)
    calibration = fit(
        table,
        args.calibration_size,
        source=f"hard population, seed {args.seed}",
        method=args.method,
    )
    calibration.save(RESULTS / "calibration.json")
    del gallery, truth
    out: dict[str, Any] = {
        "calibration": {"size": args.calibration_size, **calibration.counts},
        "sizes": {},
        "scan_shares": {},
    }
    pop = Population(args.seed + 1)
    for size in args.sizes:
        truth = pop.truth(size)
        sample = pop.probes(truth, args.mated, args.non_mated, stream=2)
        per_index: dict[str, Any] = {}
        for label, gallery in galleries(pop, truth, size, settings):
            console.print(f"{size:,} identities, {label} ({gallery.kind}): built")
            threads = faiss.omp_get_max_threads()
            if label == "configured":  # timed as the matcher searches (BIOX_SEARCH_THREADS)
                faiss.omp_set_num_threads(settings.search_threads or threads)
            s = score(gallery, sample, calibration, settings.candidates)
            per_index[label] = summarise(s, sample, calibration, size)
            if label == "exact" and size == args.sizes[0]:
                plot(s, sample, size)
            if label == "configured":
                out["scan_shares"][str(size)] = widths(
                    gallery, s, sample, calibration, args.scan_shares, settings.candidates
                )
            faiss.omp_set_num_threads(threads)
            del gallery  # the next index is built without this one in memory
        out["sizes"][str(size)] = per_index
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def galleries(pop: Population, truth: Any, size: int, settings: Settings) -> Any:
    exact = Gallery("flat")
    build(pop, truth, exact)
    yield "exact", exact
    configured = Gallery.for_size(size, settings.index, settings.exact_max, settings.ivf_nprobe)
    if configured.kind == "flat":
        return
    del exact
    sample = np.random.default_rng(0).choice(size, min(size, 100_000), replace=False)
    configured.train(truth.face[sample], truth.fingers[2][sample])
    build(pop, truth, configured)
    yield "configured", configured


def widths(
    gallery: Gallery,
    s: Scored,
    sample: Probes,
    calibration: Calibration,
    shares: list[float],
    k: int,
) -> list[dict[str, Any]]:
    """The configured index at each share of its lists in ``--scan-shares``, the configured
    width (already scored, ``s``) first."""
    nlist = faiss.extract_index_ivf(gallery.face.index).nlist
    rows = [width_row(s, sample, gallery.face.nprobe, nlist)]
    for share in shares:
        nprobe = max(1, round(nlist * share))
        if nprobe == rows[0]["lists"]:
            continue
        gallery.scan(nprobe)
        console.print(f"  scanning {nprobe} of {nlist} lists")
        rows.append(width_row(score(gallery, sample, calibration, k), sample, nprobe, nlist))
    return sorted(rows, key=lambda r: r["lists"])


def width_row(s: Scored, sample: Probes, nprobe: int, nlist: int) -> dict[str, Any]:
    mated = sample.mate >= 0
    return {
        "lists": nprobe,
        "of": nlist,
        "search_ms": s.search_ms,
        "fnir": {r: round(fnir_at(s, sample, r, 0.001)[1], 4) for r in ("mean rule", "log-LR sum")},
        "rank1": round(float((s.rank["mean rule"][mated] == 1).mean()), 4),
    }


def summarise(s: Scored, sample: Probes, calibration: Calibration, size: int) -> dict[str, Any]:
    mated = sample.mate >= 0
    high, low = calibration.thresholds(size)
    fpir_high, fnir_high = rates(s, sample, "log-LR sum", high)
    fpir_low, fnir_low = rates(s, sample, "log-LR sum", low)
    best = s.best["log-LR sum"]
    band = (best >= low) & (best < high)
    right = s.rank["log-LR sum"] == 1
    # errors at the match threshold alone: mated probes missed, non-mated probes matched
    errors = (mated & ~((best >= high) & right)) | (~mated & (best >= high))
    rules = {}
    for rule in RULES:
        has = s.has[rule]
        rules[rule] = {
            "fnir": {f"{f:g}": round(fnir_at(s, sample, rule, f)[1], 4) for f in FPIRS},
            "rank1": round(float((s.rank[rule][mated] == 1).mean()), 4),
            "rank10": round(
                float(((s.rank[rule][mated] >= 1) & (s.rank[rule][mated] <= 10)).mean()), 4
            ),
            "probes_with_modality": round(float(has.mean()), 3),
        }
    fixed_high = calibration.thresholds(calibration.tail.searched)[0]
    return {
        "probes": {"mated": int(mated.sum()), "non_mated": int((~mated).sum())},
        "rules": rules,
        "calibrated": {
            "match_threshold": round(high, 2),
            "review_threshold": round(low, 2),
            "fpir_match": {"target": calibration.fpir_match, "measured": round(fpir_high, 5)},
            "fpir_review": {"target": calibration.fpir_review, "measured": round(fpir_low, 5)},
            "fnir_at_match": round(fnir_high, 4),
            "fnir_at_review": round(fnir_low, 4),
            "review_share": round(float(band.mean()), 4),
            "review_mated": int((band & mated).sum()),
            "review_non_mated": int((band & ~mated).sum()),
            "errors_at_match": int(errors.sum()),
            "errors_caught_by_review": int((errors & band).sum()),
        },
        "fixed_threshold": {
            "threshold": round(fixed_high, 2),
            "set_at": calibration.tail.searched,
            "fpir": round(rates(s, sample, "log-LR sum", fixed_high)[0], 5),
        },
    }


def plot(s: Scored, sample: Probes, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for rule in RULES:
        fpir, fnir = det(s, sample, rule)
        keep = fpir > 0
        ax.plot(fpir[keep], fnir[keep], label=rule, lw=2 if rule == "log-LR sum" else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FPIR (non-mated probes with a candidate at or above the threshold)")
    ax.set_ylabel("FNIR (mated probes whose mate is not first at or above it)")
    ax.set_title(f"Hard population, {size:,} identities, exact search")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOT)
    plt.close(fig)


def render(result: dict[str, Any]) -> str:
    """The tables docs/matching.md carries between the evaluation markers."""
    lines = []
    c = result["calibration"]
    lines.append(
        f"Calibrated on {c['size']:,} identities (seed A): {c['mated_probes']:,} mated and "
        f"{c['non_mated_probes']:,} non-mated probes, {c['mated_comparisons']:,} mated and "
        f"{c['non_mated_comparisons']:,} non-mated comparisons. Evaluated on an independent "
        f"gallery (seed B) with held-out probes; {result['seconds']:.0f} s in all "
        f"(`make evaluate`, {result.get('machine', 'this machine')})."
    )
    for size, per in result["sizes"].items():
        for label, r in per.items():
            p = r["probes"]
            lines += [
                "",
                f"**{int(size):,} identities, {label} search** ({p['mated']:,} mated, "
                f"{p['non_mated']:,} non-mated probes)",
                "",
                "| rule | FNIR at FPIR 1 % | 0.1 % | 0.01 % | rank 1 | rank 10 | probes with it |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for rule, v in r["rules"].items():
                f = v["fnir"]
                lines.append(
                    f"| {rule} | {f['0.01']:.2%} | {f['0.001']:.2%} | {f['0.0001']:.2%} | "
                    f"{v['rank1']:.2%} | {v['rank10']:.2%} | {v['probes_with_modality']:.0%} |"
                )
            k = r["calibrated"]
            fixed = r["fixed_threshold"]
            lines += [
                "",
                f"Calibrated thresholds at this size: match {k['match_threshold']}, review "
                f"{k['review_threshold']}. FPIR at the match threshold "
                f"{k['fpir_match']['measured']:.3%} for a target of "
                f"{k['fpir_match']['target']:.1%}; at the review threshold "
                f"{k['fpir_review']['measured']:.3%} for {k['fpir_review']['target']:.0%}. "
                f"FNIR {k['fnir_at_match']:.2%} at the match threshold. The review band holds "
                f"{k['review_share']:.2%} of probes ({k['review_mated']} mated, "
                f"{k['review_non_mated']} non-mated) and catches {k['errors_caught_by_review']} "
                f"of the {k['errors_at_match']} errors the match threshold alone makes. The "
                f"match threshold set for {fixed['set_at']:,} identities ({fixed['threshold']}) "
                f"gives FPIR {fixed['fpir']:.3%} here.",
            ]
        lines += render_widths(result, size, per)
    return "\n".join(lines)


def render_widths(result: dict[str, Any], size: str, per: dict[str, Any]) -> list[str]:
    rows = result.get("scan_shares", {}).get(size, [])
    if len(rows) < 2:
        return []
    exact = per["exact"]["rules"]
    lines = [
        "",
        f"**{int(size):,} identities, lists scanned** (the configured index searched again, "
        "one thread; FNIR at FPIR 0.1 %, and in brackets the points it adds over exact "
        "search; the CPU includes every finger and the irises' exhaustive search)",
        "",
        "| lists scanned | share | all candidates, CPU ms per probe | mean rule | log-LR sum | "
        "rank 1 (mean rule) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        added = {k: (v - exact[k]["fnir"]["0.001"]) * 100 for k, v in r["fnir"].items()}
        lines.append(
            f"| {r['lists']:,} of {r['of']:,} | {r['lists'] / r['of']:.0%} | {r['search_ms']} | "
            f"{r['fnir']['mean rule']:.2%} ({added['mean rule']:+.2f}) | "
            f"{r['fnir']['log-LR sum']:.2%} ({added['log-LR sum']:+.2f}) | {r['rank1']:.2%} |"
        )
    return lines


def write_doc(result: dict[str, Any]) -> None:
    text = DOC.read_text()
    start, end = "<!-- evaluation:start -->", "<!-- evaluation:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    DOC.write_text(f"{head}{start}\n{render(result)}\n{end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[100_000])
    parser.add_argument("--mated", type=int, default=2000)
    parser.add_argument("--non-mated", type=int, default=20000)
    parser.add_argument("--calibration-size", type=int, default=10_000)
    parser.add_argument("--calibration-mated", type=int, default=2000)
    parser.add_argument("--calibration-non-mated", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--method", default="logistic", help="logistic (floored) or isotonic")
    parser.add_argument(
        "--scan-shares",
        type=lambda v: [float(x) for x in v.split(",") if x.strip()],
        default=[],
        help="search the configured index again at each share of its lists, e.g. 0.04,0.08",
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = evaluate(args)
    result["machine"] = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    (RESULTS / "evaluation.json").write_text(json.dumps(result, indent=1))
    write_doc(result)
    console.print(render(result))


if __name__ == "__main__":
    main()
