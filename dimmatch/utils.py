"""Small shared helpers: devices, seeding, atomic writes, logging."""

import json
import logging
import os
import random
import sys

import numpy as np
import torch

from .errors import ConfigError

logger = logging.getLogger("dimmatch")


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
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj, path: str) -> None:
    """Write `obj` so that `path` is either the old file or the complete new one, never half."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(obj, path: str) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def setup_logging(log_file: str | None = None, main_process: bool = True) -> None:
    """INFO messages of dimmatch on stdout (main process only) and in an optional log file.

    Only the `dimmatch` logger is configured: the root logger, and whatever a host program
    or test harness attached to it, is left alone."""
    for handler in getattr(logger, "_dimmatch_handlers", []):
        logger.removeHandler(handler)
        handler.close()
    handlers = []
    if main_process:
        handlers.append(logging.StreamHandler(sys.stdout))
        if log_file:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("%(asctime)s %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger._dimmatch_handlers = handlers
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    # transformers is chatty about unused weights of the hub checkpoints we load on purpose
    from transformers.utils import logging as transformers_logging
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
