"""Tensor helpers shared by encoders and heads."""

import torch


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x|| + eps): the released code adds eps to the norm, not inside the root."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) lengths -> (N, max_len) bool mask of valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
