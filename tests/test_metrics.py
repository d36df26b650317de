"""Rank metrics on matrices whose answers are known by hand, and against a plain loop."""

import numpy as np
import pytest

from errors import UserError
from evaluation.metrics import (coco_five_fold, i2t_ranks, recall_summary, retrieval_metrics,
                                         t2i_ranks)


def loop_ranks(sims):
    """The released argsort loops (valid when there are no ties)."""
    n = sims.shape[0]
    i2t = np.zeros(n)
    for i in range(n):
        order = np.argsort(sims[i])[::-1]
        i2t[i] = min(np.where(order == j)[0][0] for j in range(5 * i, 5 * i + 5))
    t2i = np.zeros(5 * n)
    for j in range(5 * n):
        order = np.argsort(sims[:, j])[::-1]
        t2i[j] = np.where(order == j // 5)[0][0]
    return i2t, t2i


def hand_matrix():
    # image 0 owns captions 0-4, image 1 owns 5-9
    sims = np.array([
        [0.5, 0.9, 0.1, 0.2, 0.3, 0.1, 0.2, 0.95, 0.0, 0.1],
        [0.6, 0.2, 0.3, 0.1, 0.0, 0.4, 0.8, 0.3, 0.7, 0.2],
    ])
    return sims


def test_hand_made_ranks():
    sims = hand_matrix()
    # image 0: best own 0.9 (caption 1) is beaten by caption 7 (0.95) -> rank 1; image 1: own 0.8 is top -> 0
    assert i2t_ranks(sims).tolist() == [1, 0]
    # caption j ranks its image among 2: rank 1 when the other image scores at least as high
    expected_t2i = [1 if sims[1 - j // 5, j] >= sims[j // 5, j] else 0 for j in range(10)]
    assert expected_t2i == [1, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert t2i_ranks(sims).tolist() == expected_t2i
    metrics = retrieval_metrics(sims)
    assert metrics["i2t"]["r1"] == 50.0 and metrics["i2t"]["r5"] == 100.0
    assert metrics["t2i"]["r1"] == 70.0
    assert metrics["i2t"]["medr"] == 1.0  # floor(median([1, 0]) = 0.5) + 1
    assert metrics["i2t"]["meanr"] == 1.5
    assert metrics["rsum"] == pytest.approx(50 + 100 + 100 + 70 + 100 + 100)


def test_only_the_best_of_five_captions_counts():
    sims = np.zeros((2, 10))
    sims[0, 4] = 1.0        # the last of image 0's captions is its best one
    sims[0, 5:10] = 0.5     # image 1's captions score below it for image 0
    sims[1, 5] = 1.0
    assert i2t_ranks(sims).tolist() == [0, 0]
    sims[0, 9] = 2.0        # one negative above image 0's best caption
    assert i2t_ranks(sims).tolist() == [1, 0]


def test_ties_count_against_the_model():
    sims = np.ones((12, 60))
    assert i2t_ranks(sims).tolist() == [55] * 12    # every negative caption ties
    assert t2i_ranks(sims).tolist() == [11] * 60    # every other image ties
    assert retrieval_metrics(sims)["rsum"] == 0.0   # a constant model is never rewarded
    sims = np.eye(4).repeat(5, axis=1)               # perfect scores, ties among the positives only
    assert retrieval_metrics(sims)["rsum"] == 600.0


def test_median_rank_uses_floor_plus_one():
    assert recall_summary(np.array([0, 1, 2, 3]))["medr"] == 2.0  # median 1.5 -> 1 + 1
    assert recall_summary(np.array([4, 4, 9]))["medr"] == 5.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_matrices_match_the_released_loop(seed):
    sims = np.random.default_rng(seed).normal(size=(37, 185))
    sims[:, :] += np.repeat(np.eye(37), 5, axis=1) * 0.8   # make recall non-trivial
    i2t, t2i = loop_ranks(sims)
    assert np.array_equal(i2t_ranks(sims), i2t)
    assert np.array_equal(t2i_ranks(sims), t2i)


def test_five_fold_is_the_mean_of_diagonal_blocks():
    sims = np.random.default_rng(3).normal(size=(10, 50))
    result = coco_five_fold(sims)
    assert result["fold_images"] == 2
    second = retrieval_metrics(sims[2:4, 10:20])
    assert result["folds"][1] == second
    assert result["mean"]["rsum"] == pytest.approx(np.mean([f["rsum"] for f in result["folds"]]))


def test_bad_matrices_are_rejected():
    with pytest.raises(UserError, match="N images x 5N captions"):
        retrieval_metrics(np.zeros((3, 10)))
    sims = np.zeros((2, 10))
    sims[0, 3] = np.nan
    with pytest.raises(UserError, match="NaN"):
        retrieval_metrics(sims)
