"""The interface every similarity head implements.

Scoring is split so that evaluation can encode and prepare every image and caption once:
`prepare_images` / `prepare_captions` hold all per-item work (ESL levels, folded level
matrices, pooling), and `score` only does the cross-modal part for a block of
images x captions. Training calls `forward`, which is the same composition.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

LOCAL = "local"    # (N, T, d) token/region features with lengths
GLOBAL = "global"  # (N, d) one vector per item


@dataclass(frozen=True)
class HeadSpec:
    """A registered head (`--sim_head NAME`): how to build it from a config, which feature kinds it
    accepts, its own options, and the joint size it is released with on local features."""

    name: str
    summary: str
    build: Callable            # (cfg, feature_kind) -> SimilarityHead
    feature_kinds: tuple
    options: tuple = ()        # its own hyper-parameters (config.schema.Option), offered by train.py
    embed_size: int = 512      # default --embed_size on region/word features
    resolve: Callable | None = None   # (values: dict) -> None: options that follow from others


class SimilarityHead(nn.Module):
    feature_kinds: tuple[str, ...] = (LOCAL,)
    # True when `score` is the inner product of the prepared features, which are then this head's
    # exact global embedding (searched as is by two-stage retrieval); other heads are shortlisted by
    # pooled encoder features (modules.common.pooled) or another model's.
    exact_global = False

    def prepare_images(self, features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return features

    def prepare_captions(self, features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        return features

    def score(self, images: torch.Tensor, image_lengths: torch.Tensor | None,
              captions: torch.Tensor, caption_lengths: torch.Tensor | None) -> torch.Tensor:
        """(n_images x n_captions) similarity of prepared images and captions."""
        raise NotImplementedError

    def pair_bytes(self, n_words: int, n_regions: int) -> int:
        """Peak bytes of intermediate tensors per (image, caption) pair inside `score`."""
        return 4

    def explain(self, images: torch.Tensor, image_lengths: torch.Tensor | None,
                captions: torch.Tensor, caption_lengths: torch.Tensor | None) -> dict:
        """What `score` saw, for prepared images and captions (small blocks: it keeps every part):
        `score` (I, C); `parts` (I, C, P), additive parts of the score that sum to it (levels or
        dimension groups), named by `part_names` (`part_kind` says which); `attention` (I, C, L, R),
        the weight each caption word gave each region when the head attends (else None)."""
        raise NotImplementedError(f"{type(self).__name__} does not explain its scores")

    def forward(self, images, image_lengths, captions, caption_lengths):
        return self.score(self.prepare_images(images, image_lengths), image_lengths,
                          self.prepare_captions(captions, caption_lengths), caption_lengths)


def level_coefficients(weights: torch.Tensor, sigma: torch.Tensor, lam: torch.Tensor,
                       sigmoid_threshold: bool) -> torch.Tensor:
    """ESL level weights a_l = exp((|w_l| - thr) * exp(lam)) * w_l with
    thr = (max|w| - min|w|) * s + min|w|, s = sigmoid(sigma) (CLIP variant) or sigma (region)."""
    magnitude = weights.abs()
    share = torch.sigmoid(sigma) if sigmoid_threshold else sigma
    threshold = (magnitude.max() - magnitude.min()) * share + magnitude.min()
    return torch.exp((magnitude - threshold) * lam.exp()) * weights


def dimension_groups(width: int, groups: int = 16) -> list[tuple[int, int]]:
    """Contiguous [start, end) groups of `width` dimensions, at most `groups` of them."""
    size = -(-width // min(groups, width))
    return [(start, min(width, start + size)) for start in range(0, width, size)]


def split_inner_product(images: torch.Tensor, captions: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """(I, C, P): the inner products images @ captions.T restricted to each span of dimensions."""
    return torch.stack([images[:, a:b] @ captions[:, a:b].t() for a, b in spans], dim=-1)
