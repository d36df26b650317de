"""Where and in what precision the work runs: device choice, autocast, torch.distributed."""

import contextlib
import ctypes
import os
import platform

import torch

from errors import ConfigError


def check_device_options(cfg) -> None:
    """--amp fp16 and --tf32 on need CUDA (train and evaluation alike)."""
    device = cfg.device
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cfg.amp == "fp16" and not cuda:
        raise ConfigError("--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)")
    if cfg.tf32 == "on" and not cuda:
        raise ConfigError("--tf32 on needs CUDA (TF32 is a mode of NVIDIA GPUs; the CPU computes in fp32)")


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
    if device.type == "cpu":
        keep_freed_cpu_memory()
    return device


def keep_freed_cpu_memory() -> None:
    """Serve large CPU tensors from a heap that is never given back to the kernel (glibc).

    A training step allocates and frees gigabytes of big tensors; by default glibc maps each one
    afresh and unmaps it when freed, so every step faults all its pages in again: about 1 s of an
    8 s X-Dim step at batch 128 on a 2-core VM, and most of its step-to-step spread. Without it
    the peak memory is the same and the faults happen once. Nothing changes off glibc, or where
    the user chose their own MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or \
            {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4   # glibc's <malloc.h> parameter numbers
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, -1)           # -1: never trim


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
