"""Ranking losses over a score matrix whose positives are its diagonal.

Both losses are written per query: a block of rows (images scoring all captions) and a block
of columns (captions scoring all images), each with the index of its positive. On one
process the blocks are the whole matrix and its transpose; under DDP each rank passes only
the rows and columns it owns, and the sum over ranks is the single-process loss.
"""

import torch
from torch import nn
from torch.nn import functional as F


class HingeLoss(nn.Module):
    """VSE hinge with margin: violations summed over negatives, or only the hardest (VSE++)."""

    uses_logit_scale = False

    def __init__(self, margin: float = 0.2, max_violation: bool = False):
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation

    def query_costs(self, block: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        positive_scores = block.gather(1, positives[:, None])
        costs = (self.margin + block - positive_scores).clamp(min=0)
        costs = costs.scatter(1, positives[:, None], 0.0)
        return costs.max(1).values if self.max_violation else costs.sum(1)

    def forward(self, rows, row_positives, columns, column_positives, batch_size):
        return self.query_costs(rows, row_positives).sum() + self.query_costs(columns, column_positives).sum()


class InfoNCELoss(nn.Module):
    """CLIP's symmetric cross-entropy: mean of image->text and text->image CE on scaled logits."""

    uses_logit_scale = True

    def forward(self, rows, row_positives, columns, column_positives, batch_size):
        row_ce = F.cross_entropy(rows, row_positives, reduction="sum")
        column_ce = F.cross_entropy(columns, column_positives, reduction="sum")
        return (row_ce + column_ce) / (2 * batch_size)


def full_matrix_loss(criterion: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """The loss of a square score matrix with diagonal positives (single process)."""
    positives = torch.arange(scores.shape[0], device=scores.device)
    return criterion(scores, positives, scores.t(), positives, scores.shape[0])
