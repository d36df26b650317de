"""Ranking losses over a score matrix whose positives are its diagonal.

Both losses are written per query: a block of rows (images scoring all captions) and a block
of columns (captions scoring all images), each with the index of its positive. On one
process the blocks are the whole matrix and its transpose; under DDP each rank passes only
the rows and columns it owns, and the sum over ranks is the single-process loss.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from config import catalogue
from config.catalogue import Declared


class HingeLoss(nn.Module):
    """VSE hinge with margin: violations summed over negatives, or only the hardest (VSE++)."""

    uses_logit_scale = False

    def __init__(self, margin: float = 0.2, max_violation: bool = False, mean_warmup_epochs: int = 0):
        super().__init__()
        self.margin = margin
        self.hardest_always = max_violation
        self.max_violation = max_violation
        self.mean_warmup_epochs = mean_warmup_epochs

    def start_epoch(self, epoch: int) -> None:
        """Violations summed over all negatives during the warm-up epochs, the hardest one after (VSE++)."""
        self.max_violation = self.hardest_always or epoch >= self.mean_warmup_epochs

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

    def start_epoch(self, epoch: int) -> None:
        pass

    def forward(self, rows, row_positives, columns, column_positives, batch_size):
        row_ce = F.cross_entropy(rows, row_positives, reduction="sum")
        column_ce = F.cross_entropy(columns, column_positives, reduction="sum")
        return (row_ce + column_ce) / (2 * batch_size)


def full_matrix_loss(criterion: nn.Module, scores: torch.Tensor) -> torch.Tensor:
    """The loss of a square score matrix with diagonal positives (single process)."""
    positives = torch.arange(scores.shape[0], device=scores.device)
    return criterion(scores, positives, scores.t(), positives, scores.shape[0])


@dataclass(frozen=True)
class LossSpec:
    """A registered training loss (`--loss NAME`): `build(cfg)` makes the module (with `start_epoch`
    and `uses_logit_scale`); `needs_logit_scale` losses train only encoder pairs that carry one."""

    name: str
    summary: str
    build: Callable
    needs_logit_scale: bool = False


LOSSES: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
    """A loss, declared for the command line (config.catalogue) unless it is already."""
    if spec.name in LOSSES:
        raise ValueError(f"loss {spec.name} is registered twice")
    LOSSES[spec.name] = spec
    catalogue.LOSSES.setdefault(spec.name, Declared(spec.name, spec.summary))
    return spec


HINGE = LossSpec("hinge", catalogue.LOSSES["hinge"].summary,
                 lambda cfg: HingeLoss(cfg.margin, cfg.max_violation, cfg.vse_mean_warmup_epochs))
INFONCE = LossSpec("infonce", catalogue.LOSSES["infonce"].summary, lambda cfg: InfoNCELoss(), needs_logit_scale=True)

for _declared in list(catalogue.LOSSES.values()):
    register_loss(catalogue.load_code(_declared))


def build_loss(cfg) -> nn.Module:
    return LOSSES[cfg.loss].build(cfg)
