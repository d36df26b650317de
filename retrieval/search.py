"""The first stage: unit global vectors searched by inner product (= cosine) with FAISS.

`flat` is exact: its shortlist equals the top K of the full inner-product matrix. `ivf` (an inverted
file of about 4 sqrt(N) lists, 1/16 of them probed) and `hnsw` (a 32-neighbour graph, efSearch 128)
are approximate and much faster on millions of items; their recall against `flat` is measured by
`recall_against_exact` and reported where they are used."""

import math
import os

import numpy as np

from errors import ConfigError

INDEX_KINDS = ("flat", "ivf", "hnsw")


def faiss():
    # faiss-cpu brings its own OpenMP runtime; its threads must sleep, not spin, once a search is
    # done, or they take the cores from torch's threads (re-ranking measured 80x slower on 2 busy
    # cores). Read when that runtime loads; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # an optional dependency (faiss-cpu), needed only by two-stage retrieval
    try:
        import faiss as module
    except ImportError as exc:
        raise ConfigError("two-stage retrieval searches with FAISS: pip install faiss-cpu==1.15.1") from exc
    return module


def build_index(vectors: np.ndarray, kind: str = "flat"):
    """A FAISS inner-product index of (N, d) vectors (added in chunks by the caller as well)."""
    module = faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if kind == "flat":
        index = module.IndexFlatIP(dim)
    elif kind == "ivf":
        lists = max(1, min(len(vectors) // 39 or 1, int(4 * math.sqrt(len(vectors)))))
        index = module.IndexIVFFlat(module.IndexFlatIP(dim), dim, lists, module.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, lists // 16)
    elif kind == "hnsw":
        index = module.IndexHNSWFlat(dim, 32, module.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        raise ConfigError(f"unknown index kind {kind!r} (choose {', '.join(INDEX_KINDS)})")
    if len(vectors):
        index.add(vectors)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the best min(k, N) items per query, best first; an approximate index that
    finds fewer marks the missing places with id -1."""
    k = min(k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def recall_against_exact(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """The share of the exact top-K that approximate shortlists hold: for each (found, exact) pair
    of (queries x K) id arrays, query by query (-1 marks no item), summed over all of them."""
    hits = total = 0
    for found, exact in pairs:
        for row_found, row_exact in zip(found, exact):
            row_exact = row_exact[row_exact >= 0]
            hits += len(np.intersect1d(row_found[row_found >= 0], row_exact))
            total += len(row_exact)
    return hits / total if total else 1.0
