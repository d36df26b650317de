"""Hinge (sum / hardest negative) and InfoNCE on matrices computed by hand."""

import math

import pytest
import torch

from modules.losses import HingeLoss, InfoNCELoss, full_matrix_loss

# rows: images, columns: captions, diagonal positives
S = torch.tensor([[0.9, 0.5, 0.3],
                  [0.75, 0.8, 0.45],
                  [0.5, 0.75, 0.6]])


def test_hinge_sum_by_hand():
    # image rows (margin 0.2 + S[i,j] - S[i,i])+: row0 0, row1 0.15, row2 0.1 + 0.35
    # caption columns (0.2 + S[i,j] - S[j,j])+: col0 0.05, col1 0.15, col2 0.05
    assert full_matrix_loss(HingeLoss(0.2, max_violation=False), S).item() == pytest.approx(0.6 + 0.25)


def test_hinge_hardest_negative_by_hand():
    # row2 keeps only its worst violation 0.35; the others have a single one
    assert full_matrix_loss(HingeLoss(0.2, max_violation=True), S).item() == pytest.approx(0.5 + 0.25)


def test_infonce_is_the_mean_of_both_cross_entropies():
    logits = S * 10
    expected = 0.0
    for i in range(3):
        expected -= math.log(math.exp(logits[i, i]) / sum(math.exp(v) for v in logits[i]))
        expected -= math.log(math.exp(logits[i, i]) / sum(math.exp(v) for v in logits[:, i]))
    assert full_matrix_loss(InfoNCELoss(), logits).item() == pytest.approx(expected / 6, rel=1e-6)


@pytest.mark.parametrize("criterion", [HingeLoss(0.2, False), HingeLoss(0.2, True), InfoNCELoss()])
def test_rank_shares_add_up_to_the_full_loss(criterion):
    """What each DDP rank computes (its rows and its columns) sums to the single-process loss."""
    scores = torch.randn(8, 8)
    total = 0.0
    for rank in range(2):
        own = torch.arange(4 * rank, 4 * rank + 4)
        total += criterion(scores[own], own, scores[:, own].t(), own, 8)
    assert total.item() == pytest.approx(full_matrix_loss(criterion, scores).item(), rel=1e-6)
