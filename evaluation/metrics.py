"""Recall@K, MedR, MeanR and rSum from an (images x captions) score matrix, vectorised.

Image i owns captions ki..ki+k-1, k = `per_image` (the split's captions per image: 5 for
Flickr30K and COCO, the default; a layout may give another). The i2t rank of image i is the number of other images'
captions scoring at least as high as its best caption; the t2i rank of caption j is the
number of other images scoring at least as high as its own image. Ties with a negative
therefore count against the model: a constant score matrix gets the worst ranks, never
perfect recall. Without ties this equals the released argsort-based ranks.
"""

import numpy as np
import torch

from datasets.precomp import CAPTIONS_PER_IMAGE
from errors import UserError

ROW_CHUNK = 500


def _as_array(sims, per_image: int) -> np.ndarray:
    sims = sims.detach().cpu().numpy() if torch.is_tensor(sims) else np.asarray(sims)
    if sims.ndim != 2 or sims.shape[1] != per_image * sims.shape[0]:
        raise UserError(f"score matrix of shape {tuple(sims.shape)} is not (N images x {per_image}N captions)")
    # one reduction instead of an elementwise isfinite pass: NaN and inf propagate into the sum
    if not np.isfinite(sims.sum(dtype=np.float64)):
        raise UserError("the score matrix has NaN or infinite entries; the model's scores are broken")
    return sims


def i2t_ranks(sims, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    sims = _as_array(sims, per_image)
    n_images = sims.shape[0]
    ranks = []
    for start in range(0, n_images, ROW_CHUNK):
        block = sims[start:start + ROW_CHUNK]
        rows = np.arange(block.shape[0])
        own = block.reshape(block.shape[0], n_images, per_image)[rows, start + rows]
        best = own.max(1, keepdims=True)
        ranks.append(np.count_nonzero(block >= best, axis=1) - np.count_nonzero(own >= best, axis=1))
    return np.concatenate(ranks)


def t2i_ranks(sims, per_image: int = CAPTIONS_PER_IMAGE) -> np.ndarray:
    sims = _as_array(sims, per_image)
    n_images, n_captions = sims.shape
    own = sims[np.arange(n_captions) // per_image, np.arange(n_captions)]
    at_least = np.zeros(n_captions, dtype=np.int64)
    for start in range(0, n_images, ROW_CHUNK):
        at_least += np.add.reduce(sims[start:start + ROW_CHUNK] >= own[None, :], axis=0, dtype=np.int64)
    return at_least - 1


def shortlist_ranks(items: np.ndarray, scores: np.ndarray, positive: np.ndarray, outside_rank: int) -> np.ndarray:
    """Ranks of queries answered by a re-ranked shortlist: `items` (queries x K ids, -1 for none),
    their `scores`, and whether each item is a positive of its query. As in the exhaustive ranks, a
    query's rank is the number of negatives scoring at least as high as its best positive; a query
    whose positives are all outside the shortlist ranks last (`outside_rank`: every negative ties
    with them below the shortlist)."""
    positive = positive & (items >= 0)
    best = np.where(positive, scores, -np.inf).max(1, initial=-np.inf)
    above = np.count_nonzero((scores >= best[:, None]) & ~positive & (items >= 0), axis=1)
    return np.where(positive.any(1), above, outside_rank)


def two_stage_ranks(i2t_items, i2t_scores, t2i_items, t2i_scores,
                    per_image: int = CAPTIONS_PER_IMAGE) -> tuple[np.ndarray, np.ndarray]:
    """(i2t ranks, t2i ranks) of re-ranked shortlists (image i owns captions ki..ki+k-1)."""
    n_images, n_captions = len(i2t_items), len(t2i_items)
    if n_captions != per_image * n_images:
        raise UserError(f"{n_captions} caption queries for {n_images} images, not {per_image} per image")
    i2t = shortlist_ranks(i2t_items, i2t_scores, i2t_items // per_image == np.arange(n_images)[:, None],
                          n_captions - per_image)
    t2i = shortlist_ranks(t2i_items, t2i_scores, t2i_items == (np.arange(n_captions) // per_image)[:, None],
                          n_images - 1)
    return i2t, t2i


# The metric keys, declared once: validation, reports, two-stage comparisons, the sweep and the
# model card read them from here. rSum is the sum of the recalls of both directions.
DIRECTIONS = ("i2t", "t2i")
RECALL_AT = (1, 5, 10)
RECALL_KEYS = tuple(f"r{k}" for k in RECALL_AT)


def rsum_of(i2t: dict, t2i: dict) -> float:
    return round(sum(i2t[k] + t2i[k] for k in RECALL_KEYS), 10)


def recall_line(metrics: dict, direction: str, width: int = 0, sep: str = "  ") -> str:
    """'R@1 x  R@5 y  R@10 z' of one direction."""
    return sep.join(f"R@{k} {metrics[direction][f'r{k}']:{width}.1f}" for k in RECALL_AT)


def two_stage_metrics(i2t_items, i2t_scores, t2i_items, t2i_scores, per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """Recall@K, MedR, MeanR and rSum of re-ranked shortlists."""
    i2t, t2i = (recall_summary(ranks)
                for ranks in two_stage_ranks(i2t_items, i2t_scores, t2i_items, t2i_scores, per_image))
    return {"i2t": i2t, "t2i": t2i, "rsum": rsum_of(i2t, t2i)}


def recall_summary(ranks: np.ndarray) -> dict:
    """Rounded to 10 decimals: 14.000000000000002 is 14 (the counts behind them are exact)."""
    recalls = {f"r{k}": round(100.0 * float(np.mean(ranks < k)), 10) for k in RECALL_AT}
    return {**recalls, "medr": float(np.floor(np.median(ranks)) + 1), "meanr": round(float(ranks.mean() + 1), 10)}


def retrieval_metrics(sims, per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """{'i2t': {...}, 't2i': {...}, 'rsum': float} of one score matrix."""
    i2t = recall_summary(i2t_ranks(sims, per_image))
    t2i = recall_summary(t2i_ranks(sims, per_image))
    return {"i2t": i2t, "t2i": t2i, "rsum": rsum_of(i2t, t2i)}


def coco_five_fold(sims, folds: int = 5, per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """COCO 1K: the mean over the 5 diagonal blocks of the 5K matrix, 1,000 images each
    (scores are pairwise, so a block equals scoring that fold on its own)."""
    sims = _as_array(sims, per_image)
    n_images = sims.shape[0]
    if n_images % folds:
        raise UserError(f"{n_images} images do not split into {folds} equal folds")
    size = n_images // folds
    results = []
    for fold in range(folds):
        rows = slice(fold * size, (fold + 1) * size)
        cols = slice(fold * size * per_image, (fold + 1) * size * per_image)
        results.append(retrieval_metrics(sims[rows, cols], per_image))
    return {"folds": results, "mean": mean_metrics(results), "fold_images": size}


def mean_metrics(results: list[dict]) -> dict:
    """The mean of several metrics dicts (COCO 1K: of the five folds), key by key."""
    mean = {
        direction: {key: float(np.mean([r[direction][key] for r in results])) for key in results[0][direction]}
        for direction in DIRECTIONS
    }
    mean["rsum"] = float(np.mean([r["rsum"] for r in results]))
    return mean


def format_metrics(metrics: dict, title: str = "") -> str:
    """A two-line Recall table."""
    i2t, t2i = metrics["i2t"], metrics["t2i"]
    header = f"{title}\n" if title else ""
    return (f"{header}Image to text: {recall_line(metrics, 'i2t')}  MedR {i2t['medr']:.1f}  MeanR {i2t['meanr']:.1f}\n"
            f"Text to image: {recall_line(metrics, 't2i')}  MedR {t2i['medr']:.1f}  MeanR {t2i['meanr']:.1f}\n"
            f"rSum {metrics['rsum']:.1f}")


def per_query_results(sims, top: int = 10, per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """For every image query and every caption query: the rank of its ground truth (0 = first;
    for an image, its best caption) and its `top` retrieved items with their scores, best first."""
    sims = _as_array(sims, per_image)
    top = min(top, sims.shape[0], sims.shape[1])

    def best(matrix):
        picks = np.argpartition(-matrix, top - 1, axis=1)[:, :top]
        scores = np.take_along_axis(matrix, picks, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(picks, order, 1), np.take_along_axis(scores, order, 1)

    results = {}
    for direction, matrix, ranks in (("i2t", sims, i2t_ranks(sims, per_image)), ("t2i", sims.T, t2i_ranks(sims, per_image))):
        items, scores = best(matrix)
        results[direction] = [{"query": q, "rank": int(ranks[q]), "top": items[q].tolist(),
                               "scores": [round(float(s), 6) for s in scores[q]]} for q in range(matrix.shape[0])]
    return results


def shortlist_results(reranked, top: int = 10, per_image: int = CAPTIONS_PER_IMAGE) -> dict:
    """`per_query_results` of two-stage retrieval: every query's rank (its ground truth outside the
    shortlist ranks last) and its `top` re-ranked items with their scores, best first."""
    lists = reranked.lists
    all_ranks = two_stage_ranks(lists.i2t, reranked.i2t_scores, lists.t2i, reranked.t2i_scores, per_image)
    results = {}
    for direction, items, scores, ranks in (("i2t", lists.i2t, reranked.i2t_scores, all_ranks[0]),
                                            ("t2i", lists.t2i, reranked.t2i_scores, all_ranks[1])):
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")[:, :top]
        best, values = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        results[direction] = [{"query": q, "rank": int(ranks[q]),
                               "top": [int(i) for i, s in zip(best[q], values[q]) if i >= 0 and np.isfinite(s)],
                               "scores": [round(float(s), 6) for i, s in zip(best[q], values[q])
                                          if i >= 0 and np.isfinite(s)]} for q in range(len(items))]
    return results
