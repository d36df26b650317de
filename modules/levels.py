"""ESL multi-level aggregation of feature dimensions ("measure-units").

Level 0 is the input (width d); level l has width d / k**l and is built from level l-1:

* heuristic: four bias-free Conv1d(1, 1, k, stride=k) kernels whose outputs are summed
  (released as one Conv1d(1, 4, k, stride=k)). A sum of convolutions is the convolution with
  the summed kernel, so the forward reshapes to (..., n/k, k) and takes one dot product.
* adaptive: a learnable (n_l x n_{l-1}) matrix, rows L2-normalised, keeping in each row the
  entries >= its second-largest value (ties kept), applied as x @ Q^T.

Each level is L2-normalised; the output concatenates all levels. Image and text sides own
separate instances.
"""

import torch
from torch import nn

from errors import ConfigError
from .common import l2norm

MAX_LEVELS = 8  # the released systems always build levels 1..8


def resolve_num_levels(embed_size: int, kernel_size: int, requested: int | None = None) -> int:
    """Levels the width allows: by default the released 8, fewer when d is not divisible by k**8."""
    if kernel_size < 2:
        raise ConfigError(f"--kernel_size must be at least 2 (got {kernel_size})")
    divisible = 0
    while embed_size % kernel_size ** (divisible + 1) == 0:
        divisible += 1
    if requested is None:
        if divisible == 0:
            raise ConfigError(
                f"ESL needs --embed_size divisible by --kernel_size: {embed_size} is not divisible by {kernel_size}")
        return min(MAX_LEVELS, divisible)
    if requested < 1 or requested > divisible:
        raise ConfigError(
            f"ESL with --esl_levels {requested} needs --embed_size divisible by kernel_size**{requested}="
            f"{kernel_size ** requested}, but embed_size is {embed_size}; lower --esl_levels or change --embed_size")
    return requested


def level_widths(embed_size: int, kernel_size: int, num_levels: int) -> list[int]:
    return [embed_size // kernel_size**level for level in range(num_levels + 1)]


class ESLLevels(nn.Module):
    """(..., d) -> (..., sum of level widths)."""

    def __init__(self, embed_size: int, kernel_size: int, num_levels: int, strategy: str,
                 chain_normalized: bool = True):
        super().__init__()
        if strategy not in ("heuristic", "adaptive"):
            raise ValueError(f"unknown ESL strategy {strategy!r}")
        self.strategy = strategy
        self.kernel_size = kernel_size
        self.widths = level_widths(embed_size, kernel_size, num_levels)
        # The released text side feeds the un-normalised output of level l into level l+1 and
        # the image side the normalised one; both are linear maps, so this only moves the 1e-8
        # of the norm, but it is kept for bit-level parity with released checkpoints.
        self.chain_normalized = chain_normalized
        if strategy == "heuristic":
            self.kernels = nn.ModuleList(
                nn.Conv1d(1, 4, kernel_size, stride=kernel_size, bias=False) for _ in range(num_levels))
        else:
            self.masks = nn.ModuleList(
                nn.Embedding(self.widths[level + 1], self.widths[level]) for level in range(num_levels))

    def selective_masks(self) -> list[torch.Tensor]:
        """Adaptive strategy: the sparse (n_l x n_{l-1}) matrices actually applied."""
        matrices = []
        for embedding in self.masks:
            rows = l2norm(embedding.weight)
            keep = min(2, rows.shape[1])
            kth = rows.topk(keep, dim=1).values[:, -1:]
            matrices.append(rows * (rows >= kth))
        return matrices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = self.selective_masks() if self.strategy == "adaptive" else None
        outputs = [x]
        current = x
        for level in range(len(self.widths) - 1):
            if masks is None:
                kernel = self.kernels[level].weight.sum(0)[0]
                raw = current.unflatten(-1, (-1, self.kernel_size)) @ kernel
            else:
                raw = current @ masks[level].t()
            normed = l2norm(raw)
            outputs.append(normed)
            current = normed if self.chain_normalized else raw
        return torch.cat(outputs, dim=-1)
