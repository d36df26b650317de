"""Where and in what precision the work runs: device choice, autocast, torch.distributed."""

import contextlib
import os

import torch

from errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; `auto` and `cuda` mean the local rank's GPU
    under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a device name (try auto, cpu, cuda, cuda:1)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return device


def autocast_context(device: torch.device, amp: str):
    """Mixed precision for `--amp bf16|fp16`; `off` is full fp32."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_tf32(setting: str) -> None:
    """`--tf32 on` lets CUDA matmuls and convolutions use TF32 (10-bit mantissa, much faster on
    Ampere and later); `off` (the default) keeps full fp32, so reported numbers equal the released
    code's. It has no effect on the CPU."""
    enabled = setting == "on"
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
