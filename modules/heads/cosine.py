"""Plain cosine similarity (the VSE baseline), for ablations against the dimension-level heads."""

import torch

from config.catalogue import HEADS as DECLARED
from ..common import l2norm, lengths_to_mask
from .base import GLOBAL, LOCAL, HeadSpec, SimilarityHead, dimension_groups, split_inner_product


class CosineHead(SimilarityHead):
    """cos(pool(images), pool(captions)); local features are mean- or max-pooled over valid tokens."""

    feature_kinds = (LOCAL, GLOBAL)
    exact_global = True

    def __init__(self, pool: str = "mean"):
        super().__init__()
        if pool not in ("mean", "max"):
            raise ValueError(f"unknown pooling {pool!r}")
        self.pool = pool

    def _pooled(self, features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        if features.dim() == 2:
            return l2norm(features)
        valid = lengths_to_mask(lengths, features.shape[1])[..., None]
        if self.pool == "mean":
            pooled = (features * valid).sum(1) / lengths[:, None].to(features.dtype)
        else:
            pooled = features.masked_fill(~valid, float("-inf")).amax(1)
        return l2norm(pooled)

    def prepare_images(self, features, lengths):
        return self._pooled(features, lengths)

    def prepare_captions(self, features, lengths):
        return self._pooled(features, lengths)

    def score(self, images, image_lengths, captions, caption_lengths):
        return images @ captions.t()

    def explain(self, images, image_lengths, captions, caption_lengths):
        spans = dimension_groups(images.shape[-1])
        return {"score": self.score(images, image_lengths, captions, caption_lengths),
                "parts": split_inner_product(images, captions, spans), "part_kind": "dimension group",
                "part_names": [f"dims {a}-{b - 1}" for a, b in spans], "attention": None}


HEAD_SPEC = HeadSpec(DECLARED["cosine"].name, DECLARED["cosine"].summary,
                     feature_kinds=(LOCAL, GLOBAL), options=DECLARED["cosine"].options,
                     build=lambda cfg, feature_kind: CosineHead(cfg.cosine_pool))
