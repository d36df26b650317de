"""Two-stage scoring of a split: the global stage shortlists, for every image its K best captions and
for every caption its K best images; the head scores exactly those pairs.

A query's ranking is its shortlist ordered by the head's scores, then every other item, tied below all
of them: an item outside the shortlist can never outrank one inside it, and a ground truth outside
the shortlist ranks last (ties count against the model, as in the exhaustive ranks). With K at least
the number of items, the shortlist is everything and the ranks are the exhaustive ones.

Each image is scored once against the union of the captions that shortlist it and that it
shortlists, so a pair shortlisted in both directions is scored once.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from datasets.precomp import CAPTIONS_PER_IMAGE
from devices import autocast_context
from evaluation.metrics import format_metrics, mean_metrics, two_stage_metrics
from evaluation.protocol import COCO_FOLDS, fold_note
from .search import build_index, recall_against_exact, search

CPU_BLOCK_BYTES = 32 * 2**20


@dataclass
class Shortlists:
    """Best-first item ids per query (-1 where an approximate index found fewer than K)."""

    i2t: np.ndarray       # (images, K) caption ids
    t2i: np.ndarray       # (captions, K') image ids
    seconds: float
    kind: str
    recall_vs_exact: float | None = None     # approximate indexes: the share of the exact top-K they hold


def shortlist(image_vectors: np.ndarray, caption_vectors: np.ndarray, k: int, kind: str = "flat") -> Shortlists:
    """The K best captions of every image and images of every caption by inner product."""
    started = time.perf_counter()
    _, i2t = search(build_index(caption_vectors, kind), image_vectors, k)
    _, t2i = search(build_index(image_vectors, kind), caption_vectors, k)
    seconds = time.perf_counter() - started
    recall = None
    if kind != "flat":
        _, exact_i2t = search(build_index(caption_vectors), image_vectors, k)
        _, exact_t2i = search(build_index(image_vectors), caption_vectors, k)
        recall = recall_against_exact([(i2t, exact_i2t), (t2i, exact_t2i)])
    return Shortlists(i2t, t2i, seconds, kind, recall)


def shortlisted_pairs(lists: Shortlists, n_captions: int) -> np.ndarray:
    """Every (image, caption) pair of either direction's shortlists, once, as image * n_captions + caption,
    sorted (so grouped by image)."""
    images = np.repeat(np.arange(len(lists.i2t)), lists.i2t.shape[1])
    captions = np.repeat(np.arange(len(lists.t2i)), lists.t2i.shape[1])
    keys = np.concatenate([images * n_captions + lists.i2t.ravel(), lists.t2i.ravel() * n_captions + captions])
    valid = np.concatenate([lists.i2t.ravel() >= 0, lists.t2i.ravel() >= 0])
    return np.unique(keys[valid])


def score_pairs(head, images, captions, keys: np.ndarray, device: torch.device, mem_gb: float | None = None,
                amp: str = "off", progress: bool = True) -> np.ndarray:
    """The head's score of each pair `keys` (image * n_captions + caption, sorted), image by image,
    its captions in blocks within the memory budget."""
    n_captions = len(captions)
    owners = keys // n_captions
    bounds = np.searchsorted(owners, np.arange(len(images) + 1))
    budget = int(mem_gb * 2**30) if mem_gb else (CPU_BLOCK_BYTES if device.type == "cpu" else 2**30)
    step = max(1, budget // max(1, head.pair_bytes(captions.max_length(), images.max_length())))
    scores = np.empty(len(keys), dtype=np.float32)
    with torch.inference_mode(), autocast_context(device, amp), \
            tqdm(total=len(images), desc="re-rank", disable=not progress, leave=False) as bar:
        for image in range(len(images)):
            start, stop = bounds[image], bounds[image + 1]
            if start < stop:
                image_block, image_lengths = images.block(image, image + 1, device)
                ids = torch.from_numpy(keys[start:stop] % n_captions)
                for first in range(0, len(ids), step):
                    block, lengths = captions.gather(ids[first:first + step], device)
                    scores[start + first:start + first + len(block)] = \
                        head.score(image_block, image_lengths, block, lengths)[0].float().cpu().numpy()
            bar.update(1)
    return scores


def lookup(keys: np.ndarray, scores: np.ndarray, items: np.ndarray, n_captions: int, images_query: bool) \
        -> np.ndarray:
    """The scores of each query's shortlist (NaN where the list has no item)."""
    query = np.repeat(np.arange(len(items)), items.shape[1])
    wanted = query * n_captions + items.ravel() if images_query else items.ravel() * n_captions + query
    found = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
    values = np.where((items.ravel() >= 0) & (keys[found] == wanted), scores[found], np.nan)
    return values.reshape(items.shape)


@dataclass
class Reranked:
    """Both directions' shortlists with the head's scores, and what they cost."""

    lists: Shortlists
    i2t_scores: np.ndarray
    t2i_scores: np.ndarray
    pairs_scored: int
    rerank_seconds: float

    def cost(self, n_images: int, n_captions: int) -> dict:
        return {"k": int(max(self.lists.i2t.shape[1], self.lists.t2i.shape[1])), "index": self.lists.kind,
                "pairs_scored": int(self.pairs_scored), "exhaustive_pairs": int(n_images * n_captions),
                "shortlist_seconds": round(self.lists.seconds, 4), "rerank_seconds": round(self.rerank_seconds, 4),
                "index_recall_vs_exact": self.lists.recall_vs_exact}


def rerank(head, images, captions, lists: Shortlists, device: torch.device, mem_gb: float | None = None,
           amp: str = "off", progress: bool = True) -> Reranked:
    started = time.perf_counter()
    keys = shortlisted_pairs(lists, len(captions))
    scores = score_pairs(head, images, captions, keys, device, mem_gb, amp, progress)
    i2t = lookup(keys, scores, lists.i2t, len(captions), images_query=True)
    t2i = lookup(keys, scores, lists.t2i, len(captions), images_query=False)
    return Reranked(lists, i2t, t2i, len(keys), time.perf_counter() - started)


def two_stage_report(head, encoded, first_stage, k: int, kind: str, coco_testall: bool, label: str,
                     device: torch.device, mem_gb: float | None = None, amp: str = "off", progress: bool = True,
                     per_image: int = CAPTIONS_PER_IMAGE):
    """(metrics, printed table, re-ranked shortlists of the whole split) of two-stage retrieval: the
    first stage's global vectors (images, captions) shortlist K items per query, the head re-ranks.
    COCO testall: each 1K fold on its own (its shortlists within the fold), and the whole 5K."""
    images, captions = encoded
    image_vectors, caption_vectors = first_stage
    n_images = len(images)

    def run(first: int, stop: int):
        per = per_image
        lists = shortlist(image_vectors[first:stop], caption_vectors[first * per:stop * per], k, kind)
        result = rerank(head, images.subset(first, stop), captions.subset(first * per, stop * per), lists, device,
                        mem_gb, amp, progress)
        metrics = two_stage_metrics(lists.i2t, result.i2t_scores, lists.t2i, result.t2i_scores, per)
        return {**metrics, "two_stage": result.cost(stop - first, per * (stop - first))}, result

    full, whole = run(0, n_images)
    cost = full["two_stage"]
    line = (f"two-stage, K = {cost['k']} ({cost['index']} index): {cost['pairs_scored']:,} pairs scored by the head "
            f"of {cost['exhaustive_pairs']:,} ({cost['exhaustive_pairs'] / max(1, cost['pairs_scored']):.1f}x fewer); "
            f"shortlists {cost['shortlist_seconds']:.2f}s, re-ranking {cost['rerank_seconds']:.2f}s"
            + (f"; the index holds {100 * cost['index_recall_vs_exact']:.1f}% of the exact shortlists"
               if cost["index_recall_vs_exact"] is not None else ""))
    if not coco_testall:
        title = f"{label}: {n_images} images, {per_image * n_images} captions"
        return full, format_metrics(full, title) + "\n" + line, whole
    size = n_images // COCO_FOLDS
    folds = [run(fold * size, (fold + 1) * size)[0] for fold in range(COCO_FOLDS)]
    mean = mean_metrics(folds)
    text = (format_metrics(mean, f"{label}: mean of {COCO_FOLDS} folds of {size} images") + "\n"
            + format_metrics(full, f"{label}: full {n_images} images") + fold_note(size) + "\n" + line)
    return {"five_fold_1k": mean, "full_5k": full, "folds": folds}, text, whole
