"""From how many queries a flat comparison pays as one matrix product (BLAS).

faiss compares a batch of queries with a flat set of vectors (an exact gallery, an IVF
index's centroids) one pair at a time unless the batch holds ``nq * d`` numbers of at
least ``distance_compute_blas_threshold``: 128 000 in faiss 1.15, so a batch of 64 faces
(32 768) never took BLAS. This measures both paths on random unit vectors of the face
(512-d) and finger (192-d) sizes, one thread as the workers search, at the sizes biox's
flat comparisons have: the lists of 100 000 and 1 M identities (1 265 and 4 000) and
exact galleries of 10 000 and 50 000 (``BIOX_EXACT_MAX``). ``gallery/index.BLAS_FROM`` is
the threshold it supports (docs/performance.md, "Exact comparisons as matrix products").
`python -m bench.products`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import faiss
import numpy as np

from biox.gallery.index import BLAS_FROM

BATCHES = (1, 2, 3, 4, 6, 8, 16, 64)
PAIRS = 1 << 30  # a threshold no batch reaches: one pair at a time


@contextlib.contextmanager
def blas_threshold(numbers: int) -> Iterator[None]:
    """faiss's threshold at ``numbers`` for the block, and as it was after."""
    kept = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = numbers
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = kept


def cpu_ms(index: faiss.Index, queries: np.ndarray, k: int, threshold: int, reps: int) -> float:
    """CPU per query of ``reps`` searches with faiss's threshold at ``threshold``; the best
    of three rounds, as a loaded machine only ever adds."""
    with blas_threshold(threshold):
        index.search(queries, k)  # warm-up
        rounds = []
        for _ in range(3):
            started = time.process_time()
            for _ in range(reps):
                index.search(queries, k)
            rounds.append((time.process_time() - started) / reps)
    return min(rounds) * 1000 / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1265,4000,10000,50000")
    parser.add_argument("--k", type=int, default=40, help="results per query (RERANK times 10)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # as the workers search (BIOX_SEARCH_THREADS)
    rng = np.random.default_rng(0)
    print(f"CPU ms per query, one pair at a time / as a matrix product; BLAS_FROM {BLAS_FROM}")
    print("| vectors | d | " + " | ".join(f"{b} queries" for b in BATCHES) + " |")
    print("| ---: | ---: | " + " | ".join("---" for _ in BATCHES) + " |")
    for size in (int(s) for s in args.sizes.split(",")):
        for dim in (512, 192):
            base = rng.standard_normal((size, dim)).astype("float32")
            faiss.normalize_L2(base)
            flat = faiss.IndexFlatIP(dim)
            flat.add(base)
            cells = []
            for nq in BATCHES:
                queries = rng.standard_normal((nq, dim)).astype("float32")
                faiss.normalize_L2(queries)
                reps = max(3, int(2e8 / (size * dim * nq)))
                pairs = cpu_ms(flat, queries, args.k, PAIRS, reps)
                product = cpu_ms(flat, queries, args.k, 1, reps)
                taken = "product" if nq * dim >= BLAS_FROM else "pairs"
                cells.append(f"{pairs:.3f} / {product:.3f} ({taken})")
            print(f"| {size} | {dim} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
