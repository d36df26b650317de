"""X-Dim: cross-dimensional semantic dependency with sparse dependency weights."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..common import l2norm, lengths_to_mask
from .base import LOCAL, SimilarityHead


class XDimHead(SimilarityHead):
    """Text-to-image attention scaled by the dependency diagonal g, then the D^T projection.

    W = sigmoid(E); thr_i = mean_i + s_i * std_i (per row); M = tanh(exp(exp(t) (W - thr)));
    D = l2norm(M * W) by rows; g = D.sum(0). For caption words w and image regions v:
    A = softmax_regions(exp(tau) * colnorm_words(leaky_relu(tanh((w * g) v^T), 0.1)));
    z = l2norm((l2norm(A v) * w) D^T); score = mean_words(sum_dims z).
    The released code multiplies by diag(g) as a dense d x d matrix; scaling by g is the same.
    """

    feature_kinds = (LOCAL,)

    def __init__(self, embed_size: int):
        super().__init__()
        self.embed_size = embed_size
        self.dependency_logits = nn.Parameter(torch.randn(embed_size, embed_size))          # E
        self.threshold_scale = nn.Parameter(torch.empty(embed_size).normal_(2.5, 0.1))     # s
        self.mask_temperature = nn.Parameter(torch.tensor(4.0))                             # t
        self.log_inv_tau = nn.Parameter(torch.tensor(math.log(1 / 0.07)))                  # tau

    def dependency(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The row-normalised dependency matrix D (d x d) and its column sums g (d,).

        Outside autograd (evaluation) it is computed once per parameter state and reused by
        every block of a test set."""
        if torch.is_grad_enabled():
            return self._dependency()
        key = (self.dependency_logits._version, self.threshold_scale._version, self.mask_temperature._version,
               self.dependency_logits.data_ptr(), self.dependency_logits.device)
        if getattr(self, "_cached_key", None) != key:
            self._cached = self._dependency()
            self._cached_key = key
        return self._cached

    def _dependency(self) -> tuple[torch.Tensor, torch.Tensor]:
        weights = torch.sigmoid(self.dependency_logits)
        threshold = weights.mean(1) + self.threshold_scale * weights.std(1)
        mask = torch.tanh(torch.exp(self.mask_temperature.exp() * (weights - threshold[:, None])))
        dependency = l2norm(mask * weights, dim=1)
        return dependency, dependency.sum(0)

    def pair_bytes(self, n_words: int, n_regions: int) -> int:
        return 4 * (3 * n_words * n_regions + 3 * n_words * self.embed_size)  # context, weighted, projected

    def score(self, images, image_lengths, captions, caption_lengths):
        dependency, diagonal = self.dependency()
        n_img, n_reg, dim = images.shape
        n_cap, n_word, _ = captions.shape
        valid = lengths_to_mask(caption_lengths, n_word).to(images.dtype)                    # (C, L)

        logits = (captions * diagonal).reshape(n_cap * n_word, dim) @ images.reshape(n_img * n_reg, dim).t()
        attn = F.leaky_relu(torch.tanh(logits.view(n_cap, n_word, n_img, n_reg)), 0.1) * valid[:, :, None, None]
        attn = attn * (self.log_inv_tau.exp() / (torch.linalg.vector_norm(attn, dim=1, keepdim=True) + 1e-8))
        attn = torch.softmax(attn, dim=-1)                                                     # over regions
        attn = attn.permute(2, 0, 1, 3).reshape(n_img, n_cap * n_word, n_reg)

        # z = l2norm(l2norm(context) * w) D^T) is computed without materialising l2norm(context):
        # with s = ||context|| + eps, sum(z) = (sum(p) / s) / (||p|| / s + eps) for p = (context * w) D^T
        context = attn @ images                                                                # (I, C*L, d)
        scale = torch.linalg.vector_norm(context, dim=-1) + 1e-8
        projected = (context * captions.reshape(1, n_cap * n_word, dim)) @ dependency.t()     # intrinsic d x d
        word_scores = (projected.sum(-1) / scale) / (torch.linalg.vector_norm(projected, dim=-1) / scale + 1e-8)
        word_scores = word_scores.view(n_img, n_cap, n_word) * valid
        return word_scores.sum(-1) / caption_lengths.to(images.dtype)
