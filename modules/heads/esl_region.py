"""ESL on word and region features (the BUTD + BERT variant)."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..common import lengths_to_mask
from ..levels import ESLLevels
from .base import LOCAL, SimilarityHead, level_coefficients


class ESLRegionHead(SimilarityHead):
    """A = sum_l y_l (a_l LN(B_l)) x_l^T for words y and regions x (all levels);
    score = mean_words(sum_regions(A * f(A))) + mean_regions(sum_words(A^T * f(A^T))),
    f(M) = softmax_rows(exp(tau) * colnorm(leaky_relu(tanh(M), 0.1))).

    Because the level matrices act on the caption side only, they are folded into the
    prepared caption features once, and A for a block is a single matrix product.
    Heuristic (H): conv levels and a_l with the sparse exponent; adaptive (A): top-2 mask
    levels and a_l = w_l (the released code multiplies the exponent by 0).
    """

    feature_kinds = (LOCAL,)

    def __init__(self, embed_size: int, kernel_size: int, num_levels: int, strategy: str):
        super().__init__()
        self.strategy = strategy
        self.image_levels = ESLLevels(embed_size, kernel_size, num_levels, strategy, chain_normalized=True)
        self.text_levels = ESLLevels(embed_size, kernel_size, num_levels, strategy, chain_normalized=False)
        widths = self.image_levels.widths
        self.widths = widths
        self.level_weights = nn.Parameter(torch.full((len(widths),), 0.1))
        self.log_inv_tau = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        if strategy == "heuristic":
            self.sigma = nn.Parameter(torch.tensor(0.0))
            self.lam = nn.Parameter(torch.tensor(3.0))
        self.bilinear = nn.ParameterList(nn.Parameter(torch.randn(n, n)) for n in widths)
        self.bilinear_norms = nn.ModuleList(nn.LayerNorm([n, n], eps=1e-8) for n in widths)

    def coefficients(self) -> torch.Tensor:
        if self.strategy == "heuristic":
            return level_coefficients(self.level_weights, self.sigma, self.lam, sigmoid_threshold=False)
        return self.level_weights

    def prepare_images(self, features, lengths):
        return self.image_levels(features)

    def prepare_captions(self, features, lengths):
        levels = self.text_levels(features).split(self.widths, dim=-1)
        coefficients = self.coefficients()
        folded = [
            level @ (norm(matrix) * coefficient)
            for level, matrix, norm, coefficient in zip(levels, self.bilinear, self.bilinear_norms, coefficients)
        ]
        return torch.cat(folded, dim=-1)

    def pair_bytes(self, n_words: int, n_regions: int) -> int:
        return 4 * 6 * n_words * n_regions

    def score(self, images, image_lengths, captions, caption_lengths):
        n_img, n_reg, width = images.shape
        n_cap, n_word, _ = captions.shape
        valid = lengths_to_mask(caption_lengths, n_word)[:, :, None, None]                   # (C, L, 1, 1)
        smooth = self.log_inv_tau.exp()
        # A for every word and region of the block, kept in the GEMM's (C, L, I, R) layout
        attn = (captions.reshape(n_cap * n_word, width) @ images.reshape(n_img * n_reg, width).t())
        attn = attn.view(n_cap, n_word, n_img, n_reg)
        activated = F.leaky_relu(torch.tanh(attn), 0.1)

        t2i = (self._word_weights(activated, valid, smooth) * attn).sum(-1)                     # (C, L, I)
        t2i_score = (t2i * valid[..., 0]).sum(1) / caption_lengths[:, None].to(attn.dtype)      # (C, I)
        i2t = (self._region_weights(activated, valid, smooth) * attn).sum(1)                    # (C, I, R)
        return (t2i_score + i2t.mean(-1)).t()

    @staticmethod
    def _word_weights(activated, valid, smooth):
        """Text-to-image: each word attends over regions, normalised across the (valid) words (C, L, I, R)."""
        masked = activated * valid
        t2i = masked * (smooth / (masked.pow(2).sum(1, keepdim=True).sqrt() + 1e-8))
        return torch.softmax(t2i, dim=-1)

    @staticmethod
    def _region_weights(activated, valid, smooth):
        """Image-to-text: each region attends over the caption's words, normalised across regions;
        padded words leave through the softmax mask (zeroing them first would make the norm's
        gradient 0/0). (C, L, I, R), summing to 1 over L."""
        i2t = activated * (smooth / (activated.pow(2).sum(-1, keepdim=True).sqrt() + 1e-8))
        return torch.softmax(i2t.masked_fill(~valid, float("-inf")), dim=1)

    def explain(self, images, image_lengths, captions, caption_lengths):
        """A is the sum of one term per level (y_l (a_l LN(B_l)) x_l^T), and given the attention
        weights the score is linear in A: each level's part is the score of its own term of A
        under the same weights; the parts sum to the score."""
        n_img, n_reg, width = images.shape
        n_cap, n_word, _ = captions.shape
        valid = lengths_to_mask(caption_lengths, n_word)[:, :, None, None]
        smooth = self.log_inv_tau.exp()
        attn = (captions.reshape(n_cap * n_word, width) @ images.reshape(n_img * n_reg, width).t())
        attn = attn.view(n_cap, n_word, n_img, n_reg)
        activated = F.leaky_relu(torch.tanh(attn), 0.1)
        words, regions = self._word_weights(activated, valid, smooth), self._region_weights(activated, valid, smooth)
        parts = []
        for caption_level, image_level in zip(captions.split(self.widths, -1), images.split(self.widths, -1)):
            term = (caption_level.reshape(n_cap * n_word, -1) @ image_level.reshape(n_img * n_reg, -1).t())
            term = term.view(n_cap, n_word, n_img, n_reg)
            to_image = ((words * term).sum(-1) * valid[..., 0]).sum(1) / caption_lengths[:, None].to(term.dtype)
            parts.append((to_image + (regions * term).sum(1).mean(-1)).t())                     # (I, C)
        return {"score": self.score(images, image_lengths, captions, caption_lengths),
                "parts": torch.stack(parts, dim=-1), "part_kind": "level",
                "part_names": [f"level {level} ({width} d)" for level, width in enumerate(self.widths)],
                "attention": words.permute(2, 0, 1, 3)}
