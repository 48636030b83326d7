"""How a search finds its IVF lists at 10 M identities (12 649 lists, 2 024 searched):
through the HNSW graph over the centroids, or by comparing every centroid at once.

`make bench-huge` measured 26.65 ms of CPU per query at 10 M with the walk; this isolates
the list-finding step, on random unit centroids of the face (512-d) and finger (192-d)
sizes, one thread and batches of 64 as the matcher searches (docs/performance.md, "A
country-sized gallery"). `python -m bench.coarse`.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from bench.products import PAIRS, blas_threshold


def per_query_ms(index: faiss.Index, queries: np.ndarray, k: int) -> float:
    index.search(queries[:64], k)  # warm-up
    started = time.process_time()
    for i in range(0, len(queries), 64):
        index.search(queries[i : i + 64], k)
    return (time.process_time() - started) * 1000 / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lists", type=int, default=12_649)
    parser.add_argument("--searched", type=int, default=2_024)
    parser.add_argument("--queries", type=int, default=640)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # as the workers search (BIOX_SEARCH_THREADS)
    rng = np.random.default_rng(0)
    total = {"graph": 0.0, "flat": 0.0}
    for dim, count in ((512, 1), (192, 2)):  # a face and two fingers per query
        centroids = rng.standard_normal((args.lists, dim)).astype("float32")
        faiss.normalize_L2(centroids)
        near = centroids[rng.integers(0, args.lists, args.queries)]
        queries = near + 0.3 * rng.standard_normal(near.shape).astype("float32")
        faiss.normalize_L2(queries)
        graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        graph.add(centroids)
        graph.hnsw.efSearch = args.searched  # as gallery/index.py sets it (``_explore``)
        flat = faiss.IndexFlatIP(dim)
        flat.add(centroids)
        walked = per_query_ms(graph, queries, args.searched)
        with blas_threshold(PAIRS):
            one_by_one = per_query_ms(flat, queries, args.searched)
        compared = per_query_ms(flat, queries, args.searched)  # from BLAS_FROM, as biox
        found_g = graph.search(queries[:64], args.searched)[1]
        found_f = flat.search(queries[:64], args.searched)[1]
        pairs = zip(found_g, found_f, strict=True)
        same = np.mean([len(set(a) & set(b)) / args.searched for a, b in pairs])
        print(
            f"{dim}-d: the graph {walked:.2f} ms, every centroid one pair at a time "
            f"{one_by_one:.2f} ms, every centroid at once (BLAS) {compared:.2f} ms of CPU per "
            f"query; the same lists {same:.2%}"
        )
        total["graph"] += count * walked
        total["flat"] += count * compared
    print(
        f"per query (a face and two fingers): the graph {total['graph']:.1f} ms, every "
        f"centroid at once {total['flat']:.1f} ms"
    )


if __name__ == "__main__":
    main()
