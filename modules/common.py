"""Tensor helpers shared by encoders and heads."""

import torch


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x|| + eps): the released code adds eps to the norm, not inside the root."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def pooled(features: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """One unit vector per item: l2norm of the mean over valid tokens or regions (local features),
    or of the feature itself (global features). The global embedding of heads without one of their
    own, searched by the first stage of two-stage retrieval and trained by --global_loss_weight."""
    if features.dim() == 2:
        return l2norm(features)
    if lengths is None:                 # every region of every image is real
        return l2norm(features.mean(1))
    valid = lengths_to_mask(lengths, features.shape[1])[..., None].to(features.dtype)
    return l2norm((features * valid).sum(1) / lengths[:, None].to(features.dtype))


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) lengths -> (N, max_len) bool mask of valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
