"""How many dimensions a PQ sub-vector holds (``gallery/index.py``, ``PQ_DIMS``): the
fast-scan search's CPU, and whether the candidates still hold the person, per modality
on the hard population (docs/performance.md, "Coarser codes").

The face and one index finger of ``--size`` identities of ``sim/population.py`` (the
population `make evaluate` scores), 2 000 mated probes, the lists scanned as the matcher
scans them (``nprobe_for``), ten candidates a probe as the matcher asks, one thread, in
batches of 64 (a saturated matcher) and of 4 (one below saturation). Every code size
shares one set of trained centroids, so only the codes differ. An exact scan of the
same gallery says which probes can be found at all. `python -m bench.codes --size
1000000`: about 12 minutes on two cores.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from rich.console import Console

from biox.gallery import index as index_mod
from biox.gallery.index import VectorIndex
from biox.sim.population import FINGERS, Population

SEED = 2026
K = 10  # the candidates a matcher asks each index for (``Gallery.search``)
console = Console()


def per_query_ms(ix: VectorIndex, queries: np.ndarray, batch: int) -> float:
    ix.search(queries[:batch], K)  # warm-up
    started = time.process_time()
    for i in range(0, len(queries), batch):
        ix.search(queries[i : i + batch], K)
    return (time.process_time() - started) * 1000 / len(queries)


def found(ix: VectorIndex | faiss.Index, queries: np.ndarray, mates: np.ndarray) -> float:
    """The share of probes whose person is among the candidates."""
    _, ids = ix.search(queries, K)
    return float(np.mean((ids == mates[:, None]).any(axis=1)))


def exact_found(gallery: np.ndarray, queries: np.ndarray, mates: np.ndarray) -> float:
    """The share of probes an exact scan finds: what any index could find at best."""
    faiss.omp_set_num_threads(2)
    exact = faiss.IndexFlatIP(gallery.shape[1])
    exact.add(gallery)
    return found(exact, queries, mates)


def training_sample(gallery: np.ndarray, nlist: int) -> np.ndarray:
    """Fifty templates a list, spread over the gallery: what k-means needs, not all of it."""
    return gallery[:: max(1, len(gallery) // (50 * nlist))][: 50 * nlist]


def modality(
    name: str, gallery: np.ndarray, queries: np.ndarray, mates: np.ndarray, dims: list[int]
) -> list[dict]:
    can_find = exact_found(gallery, queries, mates)
    ids = np.arange(len(gallery), dtype=np.int64)
    nlist = VectorIndex.nlist_for(len(gallery))
    sample = training_sample(gallery, nlist)
    centroids = None
    rows = []
    for d in dims:
        index_mod.PQ_DIMS = d  # read when an index is made
        ix = VectorIndex(gallery.shape[1], "ivf", nlist)
        if centroids is not None:  # the first code size's lists: only the codes differ
            ivf = faiss.extract_index_ivf(ix.index)
            ivf.quantizer.add(centroids)
            ivf.quantizer.is_trained = True
        started = time.perf_counter()
        ix.train(sample)
        ix.add(ids, gallery)
        built = time.perf_counter() - started
        if centroids is None:
            quantizer = faiss.extract_index_ivf(ix.index).quantizer
            centroids = quantizer.reconstruct_n(0, nlist)
        faiss.omp_set_num_threads(1)  # as the workers search (BIOX_SEARCH_THREADS)
        row = {
            "modality": name,
            "dims": d,
            "bytes": ix.index.code_size,  # what faiss stores, not what the setting implies
            "lists": f"{ix.nprobe} of {nlist}",
            "ms_64": round(per_query_ms(ix, queries, 64), 3),
            "ms_4": round(per_query_ms(ix, queries, 4), 3),
            "found": round(found(ix, queries, mates), 4),
            "exact_found": round(can_find, 4),
            "build_s": round(built, 1),
        }
        faiss.omp_set_num_threads(2)
        console.print(row)
        rows.append(row)
    return rows


def hard_population(size: int, probes: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per modality (the face, one index finger): the gallery's templates of ``size``
    people of the hard population, ``probes`` mated probes that hold that modality, and
    each probe's row in the gallery."""
    population = Population(SEED)
    with console.status(f"the hard population, {size:,} identities"):
        truth = population.truth(size)
        faces, fingers = [], []
        for _, captures in population.enrolments(truth):
            faces.append(np.stack([c.face for c in captures]))
            fingers.append(np.stack([c.fingers[FINGERS[0]] for c in captures]))
        sample = population.probes(truth, probes, 0, stream=7)
    with_face = [i for i, p in enumerate(sample.probes) if p.face is not None]
    with_finger = [i for i, p in enumerate(sample.probes) if FINGERS[0] in p.fingers]
    return [
        (
            "face",
            np.concatenate(faces),
            np.stack([sample.probes[i].face for i in with_face]),
            sample.mate[with_face],
        ),
        (
            "finger",
            np.concatenate(fingers),
            np.stack([sample.probes[i].fingers[FINGERS[0]] for i in with_finger]),
            sample.mate[with_finger],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--dims", default="4,8,16", help="dimensions per sub-vector, in turn")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    rows = []
    for name, gallery, queries, mates in hard_population(args.size, args.probes):
        rows += modality(name, gallery, queries, mates, dims)
    print(
        "| modality | dimensions per sub-vector | bytes a code | lists scanned "
        "| CPU ms/query, batches of 64 | of 4 | person among the candidates | exact search |"
    )
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['modality']} | {r['dims']} | {r['bytes']} | {r['lists']} | {r['ms_64']} "
            f"| {r['ms_4']} | {r['found']:.2%} | {r['exact_found']:.2%} |"
        )


if __name__ == "__main__":
    main()
