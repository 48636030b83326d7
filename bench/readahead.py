"""What the gathers' read-ahead saves when the templates are not in the page cache.

A 10 M gallery re-scores about 7 700 candidate rows a batch from 36 GB of mapped
templates (docs/performance.md, "A country-sized gallery"). This isolates that gather:
a file of 2 KB rows (a face) written to disk, then batches of random rows read through
the same memory map the matcher uses (``vectors._mapped``), one page fault at a time or
with ``vectors.read_ahead`` first; cold (the page cache dropped before each setting,
which needs root) and warm. `python -m bench.readahead [--gb 6]`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.run import ROOT, drop_page_cache
from biox.gallery.vectors import _mapped, read_ahead

DIM = 512  # a face: 2 KB a row


def gather_ms(rows: np.ndarray, path: Path, n: int, ahead: bool, batches: int) -> float:
    """Wall ms per batch; a fresh map each time, as a fresh matcher has."""
    mapped = _mapped(path, n, DIM)
    started = time.perf_counter()
    for batch in np.array_split(rows, batches):
        if ahead:
            read_ahead(mapped, batch)
        np.asarray(mapped[batch])
    return (time.perf_counter() - started) * 1000 / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=6.0, help="size of the file of rows")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rows", type=int, default=2560, help="rows per batch")
    args = parser.parse_args()
    path = ROOT / "var" / "readahead.f32"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(args.gb * (1 << 30)) // (DIM * 4)
    block = np.random.default_rng(0).standard_normal((65536, DIM)).astype(np.float32)
    try:
        with path.open("wb") as out:  # real blocks on disk: a sparse file reads no disk
            for start in range(0, n, len(block)):
                out.write(block[: min(len(block), n - start)].tobytes())
        rng = np.random.default_rng(1)
        for state in ("cold", "warm"):
            for ahead in (False, True):
                rows = rng.integers(0, n, args.rows * args.batches)
                if state == "cold":
                    os.sync()  # the file just written: dirty pages would stay in the cache
                    if not drop_page_cache():
                        print("cold: cannot drop the page cache (not root); skipped")
                        break
                if state == "warm":
                    gather_ms(rows, path, n, False, args.batches)  # bring them in first
                ms = gather_ms(rows, path, n, ahead, args.batches)
                how = "read ahead" if ahead else "one fault at a time"
                print(f"{state}, {how}: {ms:.1f} ms per batch of {args.rows} rows")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
