"""ESL on global CLIP embeddings: per-level weighted bilinear similarity."""

import torch
from torch import nn

from ..levels import ESLLevels
from .base import GLOBAL, SimilarityHead, level_coefficients, split_inner_product


class ESLClipHead(SimilarityHead):
    """S(img, txt) = 1/(levels+1) * sum_l x_l(img) (a_l B_l) x_l(txt)^T on L2-normalised CLIP
    embeddings, B_l initialised to the identity, thr through a sigmoid of sigma.

    Every term is bilinear in per-image and per-caption features, so the level matrices are
    folded into the prepared image features and a block of scores is one matrix product.
    """

    feature_kinds = (GLOBAL,)
    exact_global = True

    def __init__(self, embed_size: int, kernel_size: int, num_levels: int, strategy: str):
        super().__init__()
        self.image_levels = ESLLevels(embed_size, kernel_size, num_levels, strategy, chain_normalized=True)
        self.text_levels = ESLLevels(embed_size, kernel_size, num_levels, strategy, chain_normalized=False)
        self.widths = self.image_levels.widths
        self.level_weights = nn.Parameter(torch.full((len(self.widths),), 0.1))
        self.sigma = nn.Parameter(torch.tensor(-1.0))
        self.lam = nn.Parameter(torch.tensor(4.0))
        self.bilinear = nn.ParameterList(nn.Parameter(torch.eye(n)) for n in self.widths)

    def coefficients(self) -> torch.Tensor:
        """The level weights a_l (sparse exponent, threshold through a sigmoid of sigma)."""
        return level_coefficients(self.level_weights, self.sigma, self.lam, sigmoid_threshold=True)

    def prepare_images(self, features, lengths):
        features = features / features.norm(dim=-1, keepdim=True)
        levels = self.image_levels(features).split(self.widths, dim=-1)
        coefficients = self.coefficients()
        folded = [level @ (matrix * coefficient) for level, matrix, coefficient
                  in zip(levels, self.bilinear, coefficients)]
        return torch.cat(folded, dim=-1) / len(self.widths)

    def prepare_captions(self, features, lengths):
        return self.text_levels(features / features.norm(dim=-1, keepdim=True))

    def score(self, images, image_lengths, captions, caption_lengths):
        return images @ captions.t()

    def explain(self, images, image_lengths, captions, caption_lengths):
        """The score is a sum over levels of folded image level . caption level: one part each."""
        ends = torch.tensor(self.widths).cumsum(0).tolist()
        spans = list(zip([0] + ends[:-1], ends))
        return {"score": self.score(images, image_lengths, captions, caption_lengths),
                "parts": split_inner_product(images, captions, spans), "part_kind": "level",
                "part_names": [f"level {level} ({width} d)" for level, width in enumerate(self.widths)],
                "attention": None}
