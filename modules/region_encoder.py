"""BUTD region features -> joint space (the VSE-infinity 'basic' precomputed encoder)."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .common import l2norm


class RegionEncoder(nn.Module):
    """`l2norm(fc(x) + mlp(x))` per region.

    `mlp` is Linear(D, d/2) -> BatchNorm1d -> ReLU -> Linear(d/2, d), with BatchNorm over
    batch*regions. Padded (all-zero) regions are encoded like any other region, as in the
    released code. The released MLP also builds a second BatchNorm that its forward never
    uses; it is left out here (and dropped when loading released weights) so that every
    parameter receives a gradient, which DistributedDataParallel requires.
    """

    def __init__(self, img_dim: int, embed_size: int):
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_size)
        hidden = embed_size // 2
        self.mlp_in = nn.Linear(img_dim, hidden)
        self.mlp_bn = nn.BatchNorm1d(hidden)
        self.mlp_out = nn.Linear(hidden, embed_size)
        bound = math.sqrt(6.0) / math.sqrt(img_dim + embed_size)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        batch, n_regions, img_dim = regions.shape
        flat = regions.reshape(batch * n_regions, img_dim)
        hidden = F.relu(self.mlp_bn(self.mlp_in(flat)))
        features = self.fc(flat) + self.mlp_out(hidden)
        return l2norm(features.view(batch, n_regions, -1))
