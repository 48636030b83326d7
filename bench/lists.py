"""How many IVF lists a gallery is cut into (``VectorIndex.nlist_for``) at the same share
of it scanned: the fast-scan search's CPU at the batch sizes a matcher sees below
saturation, and whether the candidates still hold the person, per modality on the hard
population (docs/performance.md, "Where the latency goes").

Below saturation a matcher at 1 M identities searched batches of 6 queries at the
median, where the search cost 2.5-3.5 times its cost in batches of 64. Each list
scanned costs something of its own, whatever it holds; fewer, longer lists scan as many
codes for less. Here each list count is trained and filled from the same templates,
and searched at ``SCAN_SHARE`` of its lists (``nprobe_for``), ten candidates a probe, one
thread, in batches of 1, 4, 8 and 64. `python -m bench.lists --size 1000000 --lists
1000,2000,4000`: about 15 minutes on two cores.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from bench.codes import (
    console,
    exact_found,
    found,
    hard_population,
    per_query_ms,
    training_sample,
)
from biox.gallery.index import VectorIndex

BATCHES = (1, 4, 8, 64)


def modality(
    name: str, gallery: np.ndarray, queries: np.ndarray, mates: np.ndarray, lists: list[int]
) -> list[dict]:
    can_find = exact_found(gallery, queries, mates)
    ids = np.arange(len(gallery), dtype=np.int64)
    rows = []
    for nlist in lists:
        faiss.omp_set_num_threads(2)
        ix = VectorIndex(gallery.shape[1], "ivf", nlist)
        started = time.perf_counter()
        ix.train(training_sample(gallery, nlist))
        ix.add(ids, gallery)
        built = time.perf_counter() - started
        faiss.omp_set_num_threads(1)  # as the workers search (BIOX_SEARCH_THREADS)
        row = {
            "modality": name,
            "lists": f"{ix.nprobe} of {nlist}",
            **{f"ms_{b}": round(per_query_ms(ix, queries, b), 3) for b in BATCHES},
            "found": round(found(ix, queries, mates), 4),
            "exact_found": round(can_find, 4),
            "build_s": round(built, 1),
        }
        console.print(row)
        rows.append(row)
        del ix
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument(
        "--lists",
        default=None,
        help="list counts, in turn (default: 1/4, 1/2 and 1 times nlist_for)",
    )
    args = parser.parse_args()
    default = VectorIndex.nlist_for(args.size)
    lists = (
        [int(n) for n in args.lists.split(",")]
        if args.lists
        else [default // 4, default // 2, default]
    )
    rows = []
    for name, gallery, queries, mates in hard_population(args.size, args.probes):
        rows += modality(name, gallery, queries, mates, lists)
    print(
        "| modality | lists scanned | CPU ms/query, batches of "
        + " | ".join(str(b) for b in BATCHES)
        + " | person among the candidates | exact search | build s |"
    )
    print("| --- | --- |" + " ---: |" * len(BATCHES) + " ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['modality']} | {r['lists']} | "
            + " | ".join(str(r[f"ms_{b}"]) for b in BATCHES)
            + f" | {r['found']:.2%} | {r['exact_found']:.2%} | {r['build_s']} |"
        )


if __name__ == "__main__":
    main()
