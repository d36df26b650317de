"""Similarity heads, chosen by `--sim_head`."""

from .base import GLOBAL, LOCAL, SimilarityHead
from .cosine import CosineHead
from .esl_clip import ESLClipHead
from .esl_region import ESLRegionHead
from .xdim import XDimHead

HEAD_NAMES = ("xdim", "esl_h", "esl_a", "cosine")
ESL_STRATEGY = {"esl_h": "heuristic", "esl_a": "adaptive"}


def build_head(name: str, feature_kind: str, embed_size: int, kernel_size: int = 2,
               num_levels: int = 8, cosine_pool: str = "mean") -> SimilarityHead:
    """The head for `name` on features of `feature_kind` (ESL has a local and a global form)."""
    if name == "xdim":
        return XDimHead(embed_size)
    if name in ESL_STRATEGY:
        head_class = ESLRegionHead if feature_kind == LOCAL else ESLClipHead
        return head_class(embed_size, kernel_size, num_levels, ESL_STRATEGY[name])
    if name == "cosine":
        return CosineHead(cosine_pool)
    raise ValueError(f"unknown similarity head {name!r}")


__all__ = ["GLOBAL", "LOCAL", "HEAD_NAMES", "SimilarityHead", "build_head",
           "CosineHead", "ESLClipHead", "ESLRegionHead", "XDimHead"]
