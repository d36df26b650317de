"""X-Dim: cross-dimensional semantic dependency with sparse dependency weights."""

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from config.catalogue import HEADS as DECLARED
from ..common import l2norm, lengths_to_mask
from .base import LOCAL, HeadSpec, SimilarityHead, dimension_groups


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

    # Training scores images in blocks of about TRAIN_BLOCK_BYTES of (images x caption words x d)
    # intermediates. The three such tensors the backward needs are kept while they fit in
    # TRAIN_SAVED_BYTES (X-Dim at batch 128: about 2.5 GB); beyond that, blocks run under activation
    # checkpointing and are recomputed in backward (one more d x d product, memory of one block).
    TRAIN_BLOCK_BYTES = 64 * 2**20
    TRAIN_SAVED_BYTES = 6 * 2**30

    def forward(self, images, image_lengths, captions, caption_lengths):
        """The training scores (images x captions), equal to `score` but at the FLOP bound.

        With x = l2norm(context) * w, the word score needs only sum(x D^T) = x . g and
        ||x D^T||^2 = x (D^T D) x^T, so the d x d product runs once per word and image in the
        forward pass (as in `score`) and the backward (WordScores) adds one Gram matrix, instead
        of autograd's two more products; under checkpointing the forward product is recomputed."""
        if not torch.is_grad_enabled():
            return super().forward(images, image_lengths, captions, caption_lengths)
        dependency, diagonal = self.dependency()
        gram = dependency.t() @ dependency
        gram = (gram + gram.t()) / 2  # exactly symmetric, so the quadratic form's gradient is 2 x M
        n_img, n_reg, dim = images.shape
        n_cap, n_word, _ = captions.shape
        valid = lengths_to_mask(caption_lengths, n_word)
        # the d x d work runs on real words only: padding would waste a third of it on usual batches
        word_rows = valid.reshape(-1).nonzero().squeeze(1)
        per_image = (len(word_rows) * 5 * dim + n_cap * n_word * 3 * n_reg) * images.element_size()
        step = max(1, min(n_img, self.TRAIN_BLOCK_BYTES // per_image))
        recompute = n_img * len(word_rows) * 3 * dim * images.element_size() > self.TRAIN_SAVED_BYTES
        # what every block shares is computed (and back-propagated) once: the words scaled by g for
        # the attention, and the real words gathered for the projection
        scaled = (captions * diagonal).reshape(n_cap * n_word, dim)
        words = captions.reshape(n_cap * n_word, dim)[word_rows]                                # (W, d)
        blocks = []
        for start in range(0, n_img, step):
            inputs = (images[start:start + step], scaled, words, valid.to(images.dtype), word_rows, caption_lengths,
                      diagonal, gram, self.log_inv_tau)
            blocks.append(checkpoint(self._training_block, *inputs, use_reentrant=False) if recompute
                          else self._training_block(*inputs))
        return torch.cat(blocks)

    @staticmethod
    def _training_block(images, scaled, words, valid, word_rows, caption_lengths, diagonal, gram, log_inv_tau):
        n_img = images.shape[0]
        n_cap, n_word = valid.shape
        attn = XDimHead._attention(images, scaled, valid, log_inv_tau)
        context = attn[:, word_rows] @ images                                                  # (I, W, d)
        word_scores = WordScores.apply(context, words, diagonal, gram)                          # (I, W)
        per_caption = word_scores.new_zeros(n_img, n_cap).index_add(1, word_rows // n_word, word_scores)
        return per_caption / caption_lengths.to(images.dtype)

    @staticmethod
    def _attention(images, scaled, valid, log_inv_tau):
        """(I, C*L, R) text-to-image attention: tanh(w' v^T) for the caption words scaled by g,
        `scaled` = (w * g) as (C*L, d); leaky ReLU, normalised across the caption's valid words,
        softmax over regions at temperature exp(tau)."""
        n_img, n_reg, dim = images.shape
        n_cap, n_word = valid.shape
        logits = scaled @ images.reshape(n_img * n_reg, dim).t()
        attn = F.leaky_relu(torch.tanh(logits.view(n_cap, n_word, n_img, n_reg)), 0.1) * valid[:, :, None, None]
        attn = attn * (log_inv_tau.exp() / (torch.linalg.vector_norm(attn, dim=1, keepdim=True) + 1e-8))
        return torch.softmax(attn, dim=-1).permute(2, 0, 1, 3).reshape(n_img, n_cap * n_word, n_reg)

    def pair_bytes(self, n_words: int, n_regions: int) -> int:
        return 4 * (3 * n_words * n_regions + 3 * n_words * self.embed_size)  # context, weighted, projected

    def score(self, images, image_lengths, captions, caption_lengths):
        n_img, n_cap, n_word = len(images), *captions.shape[:2]
        attn, projected, scale, valid = self._projected(images, captions, caption_lengths)
        word_scores = (projected.sum(-1) / scale) / (torch.linalg.vector_norm(projected, dim=-1) / scale + 1e-8)
        word_scores = word_scores.view(n_img, n_cap, n_word) * valid
        return word_scores.sum(-1) / caption_lengths.to(images.dtype)

    def _projected(self, images, captions, caption_lengths):
        """(attention (I, C*L, R), p (I, C*L, d), s (I, C*L), valid words (C, L)) of `score`."""
        dependency, diagonal = self.dependency()
        n_img, n_reg, dim = images.shape
        n_cap, n_word, _ = captions.shape
        valid = lengths_to_mask(caption_lengths, n_word).to(images.dtype)                    # (C, L)

        attn = self._attention(images, (captions * diagonal).reshape(n_cap * n_word, dim), valid, self.log_inv_tau)

        # z = l2norm(l2norm(context) * w) D^T) is computed without materialising l2norm(context):
        # with s = ||context|| + eps, sum(z) = (sum(p) / s) / (||p|| / s + eps) for p = (context * w) D^T
        context = attn @ images                                                                # (I, C*L, d)
        scale = torch.linalg.vector_norm(context, dim=-1) + 1e-8
        projected = (context * captions.reshape(1, n_cap * n_word, dim)) @ dependency.t()     # intrinsic d x d
        return attn, projected, scale, valid

    def explain(self, images, image_lengths, captions, caption_lengths):
        """The score is the mean over words of sum_dims z: each group of output dimensions of z is a
        part (summed over its dimensions, averaged over the words); the parts sum to the score."""
        n_img, n_reg, dim = images.shape
        n_cap, n_word = captions.shape[:2]
        attn, projected, scale, valid = self._projected(images, captions, caption_lengths)
        z = (projected / scale[..., None]) / (torch.linalg.vector_norm(projected, dim=-1) / scale + 1e-8)[..., None]
        z = (z.view(n_img, n_cap, n_word, dim) * valid[..., None]).sum(2) / caption_lengths.to(images.dtype)[:, None]
        spans = dimension_groups(dim)
        return {"score": self.score(images, image_lengths, captions, caption_lengths),
                "parts": torch.stack([z[..., a:b].sum(-1) for a, b in spans], dim=-1), "part_kind": "dimension group",
                "part_names": [f"dims {a}-{b - 1}" for a, b in spans],
                "attention": attn.view(n_img, n_cap, n_word, n_reg)}


class WordScores(torch.autograd.Function):
    """sum(l2norm((l2norm(c) * w) D^T)) for every (image, word): with x = c * w and s = ||c|| + eps,
    it is (x . g) / (||x D^T|| + eps s), where g = column sums of D and ||x D^T||^2 = x M x^T for
    M = D^T D (symmetric). The backward is written out so that the (images x words x d) tensors
    are passed over a few times only: dx = dt g + (dn / n) x M (x M kept from the forward), dM =
    X^T diag(dn / 2n) X (one Gram matrix), dg = X^T dt."""

    @staticmethod
    def forward(ctx, context, words, diagonal, gram):
        weighted = context * words
        total = weighted @ diagonal
        product = weighted @ gram
        norm = (product * weighted).sum(-1).clamp_min(0).sqrt()          # twice as fast as vecdot on the CPU
        scale = torch.linalg.vector_norm(context, dim=-1) + 1e-8
        denominator = norm + 1e-8 * scale
        ctx.save_for_backward(context, words, weighted, diagonal, product, total, norm, scale, denominator)
        return total / denominator

    @staticmethod
    def backward(ctx, grad):
        context, words, weighted, diagonal, product, total, norm, scale, denominator = ctx.saved_tensors
        grad_total = grad / denominator
        grad_norm = -grad * total / denominator ** 2
        grad_scale = 1e-8 * grad_norm
        # d||x D^T|| / dx = x M / ||x D^T||; rows with a zero norm have a zero gradient there
        norm_coefficient = torch.where(norm > 0, grad_norm / norm.clamp_min(1e-30), torch.zeros_like(norm))
        rows = weighted.reshape(-1, weighted.shape[-1])
        grad_gram = rows.t() @ (rows * (norm_coefficient / 2).reshape(-1, 1))
        grad_diagonal = rows.t() @ grad_total.reshape(-1)
        grad_weighted = product.mul_(norm_coefficient[..., None]).addcmul_(grad_total[..., None], diagonal)
        grad_words = grad_weighted[0] * context[0]                         # summed over the block's images
        for image in range(1, len(context)):                               # without an (I, W, d) temporary
            grad_words.addcmul_(grad_weighted[image], context[image])
        grad_context = grad_weighted.mul_(words).addcmul_(
            context, (grad_scale / (scale - 1e-8).clamp_min(1e-30))[..., None])
        return grad_context, grad_words, grad_diagonal, grad_gram


HEAD_SPEC = HeadSpec(DECLARED["xdim"].name, DECLARED["xdim"].summary, feature_kinds=(LOCAL,),
                build=lambda cfg, feature_kind: XDimHead(cfg.embed_size), embed_size=1024)
