"""`make bench-huge`: a country-sized gallery on one machine (10 M identities by default).

The gallery is built from a streamed population (never all of it in memory): compressed
codes in memory, the full templates written to disk as they come (``Gallery(spill=)``)
and taken over by the snapshot without a copy. Then, as a fresh matcher would: the
snapshot loaded with its templates memory-mapped (the page cache dropped first where the
OS allows), the first answer timed, and the matcher alone measured on 2 000 mated probes:
queries/s, CPU per query, genuine top-1, and the face index's recall@1 against an exact
scan of the memory-mapped faces. Writes bench/results/huge.json and the table in
docs/performance.md between the bench-huge markers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np
from rich.console import Console
from rich.progress import Progress

from bench.run import RESULTS, ROOT, build_gallery, fresh_start, probes, rss_mb
from biox.gallery.gallery import Gallery
from biox.settings import Settings

DOC = ROOT / "docs" / "performance.md"
console = Console()


def exact_face_top1(directory: Path, queries: np.ndarray) -> np.ndarray:
    """The exact nearest face of each query, by a scan of the snapshot's face file in
    blocks (the faces of 10 M identities are 20 GB: more than memory)."""
    ids = np.load(directory / "face.vectors.ids.npy")
    faces = np.memmap(directory / "face.vectors.f32", np.float32, "r", shape=(len(ids), 512))
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("exact scan of the faces", total=len(ids))
        for start in range(0, len(ids), 500_000):
            block = np.asarray(faces[start : start + 500_000])
            scores = queries @ block.T
            j = scores.argmax(axis=1)
            better = scores[np.arange(len(queries)), j] > best
            best[better] = scores[np.arange(len(queries)), j][better]
            arg[better] = ids[start + j[better]]
            bar.advance(task, len(block))
    return arg


def run(
    size: int,
    n_probes: int,
    workdir: Path,
    settings: Settings,
    reuse: bool = False,
    read_ahead: bool | None = None,
) -> dict:
    """``reuse``: search the gallery a ``--keep`` run left in ``workdir`` (46 minutes of
    building at 10 M) instead of building it again; its build figures are not re-measured.
    ``read_ahead``: force the gathers' read-ahead on or off (None: as ``Gallery.load``
    decides) to measure what it saves."""
    directory = workdir / "gallery"
    people, batch = probes(size, n_probes)
    if reuse:
        if not (directory / "manifest.json").exists():
            raise SystemExit(f"--reuse: no gallery in {directory} (build one with --keep)")
        console.print(f"[bold]bench-huge[/] the {size:,}-identity gallery kept in {directory}")
        build_s, built_rss = None, None
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        console.print(f"[bold]bench-huge[/] {size:,} identities into {directory}")
        gallery, build_s, _ = build_gallery(
            size, "ivf", settings.ivf_nprobe, spill=directory / ".spill", per_list=20
        )
        started = time.perf_counter()
        gallery.save(directory)
        build_s += time.perf_counter() - started
        built_rss = rss_mb("RssAnon")  # memory of its own: mapped templates are page cache
        del gallery
        gc.collect()
    start_s, snapshot_mb = fresh_start(directory, batch[0], settings)
    loaded = Gallery.load(directory, settings.ivf_nprobe)
    nprobe, nlist = loaded.face.nprobe, loaded.face.index.nlist
    if read_ahead is not None:
        loaded.read_ahead(read_ahead)
    loaded.search(batch[:64])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    hits = []
    for i in range(0, len(batch), 64):
        hits.extend(loaded.search(batch[i : i + 64], k=settings.candidates, top=1))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    searching_rss = rss_mb("RssAnon")
    top1 = np.array([h[0].record_id if h else -1 for h in hits])
    sample = [p for p in batch[:200] if p.face is not None]
    queries = np.stack([p.face for p in sample])
    _, found = loaded.face.search(queries, settings.candidates)  # as the matcher asks
    exact = exact_face_top1(directory, queries)
    return {
        "size": size,
        "index": f"ivf-pq fast-scan, {nlist} lists, nprobe {nprobe}",
        "build_s": round(build_s, 1) if build_s is not None else None,
        "snapshot_mb": snapshot_mb,
        "memory_mb_built": round(built_rss) if built_rss is not None else None,
        "memory_mb_searching": round(searching_rss),
        "start_s": start_s,
        "qps_batched": round(len(batch) / wall, 1),
        "cpu_ms_per_query": round(cpu * 1000 / len(batch), 2),
        "read_ahead": loaded.face.store.read_ahead if loaded.face.store else False,
        "genuine_top1": round(float(np.mean(top1 == np.asarray(people))), 4),
        "face_recall_at_1": round(float(np.mean(found[:, 0] == exact)), 4),
    }


def write_doc(result: dict) -> None:
    r = result
    table = "\n".join(
        [
            "<!-- bench-huge:start (generated by bench/huge.py; edit outside the markers) -->",
            f"`make bench-huge` on {os.cpu_count()} cores, faiss {faiss.__version__}, "
            f"{time.strftime('%Y-%m-%d')}: {r['size']:,} identities (face 512-d + two "
            f"fingers 192-d), {r['index']}, the gathers' read-ahead "
            f"{'on' if r.get('read_ahead') else 'off'}.",
            "",
            "| build s | snapshot MB on disk | memory MB built / searching (anonymous; templates are mapped) | fresh start s | queries/s batched | CPU ms/query | genuine top-1 | face recall@1 vs exact |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {r['build_s'] or 'kept'} | {r['snapshot_mb']:,} | "
            f"{format(r['memory_mb_built'], ',') if r['memory_mb_built'] else '-'} / "
            f"{r['memory_mb_searching']:,} | {r['start_s']} | {r['qps_batched']} | "
            f"{r['cpu_ms_per_query']} | {r['genuine_top1']} | {r['face_recall_at_1']} |",
            "<!-- bench-huge:end -->",
        ]
    )
    text = DOC.read_text()
    start, end = text.find("<!-- bench-huge:start"), text.find("<!-- bench-huge:end -->")
    if start >= 0 and end > start:
        text = text[:start] + table + text[end + len("<!-- bench-huge:end -->") :]
    else:
        text = text.rstrip("\n") + "\n\n## A country-sized gallery (`make bench-huge`)\n\n" + table
    DOC.write_text(text + ("" if text.endswith("\n") else "\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "bench-huge")
    parser.add_argument(
        "--keep", action="store_true", help="leave the gallery in --dir (36 GB at 10 M)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="search the gallery --keep left; no build"
    )
    parser.add_argument(
        "--read-ahead",
        choices=("auto", "on", "off"),
        default="auto",
        help="the gathers' read-ahead (auto: on where the templates exceed half of memory)",
    )
    args = parser.parse_args()
    settings = Settings()
    faiss.omp_set_num_threads(settings.search_threads or os.cpu_count() or 1)
    forced = {"auto": None, "on": True, "off": False}[args.read_ahead]
    result = run(args.size, args.probes, args.dir, settings, reuse=args.reuse, read_ahead=forced)
    console.print(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "huge.json").write_text(json.dumps(result, indent=1))
    write_doc(result)
    if not (args.keep or args.reuse):
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
