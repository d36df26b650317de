"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

import json
import os

import numpy as np

from errors import ConfigError


def publish(tmp: str, path: str, replace: bool) -> None:
    """Move the complete file `tmp` to `path`. Without `replace` the move is refused if `path`
    exists by now (another command wrote it while this one ran), atomically: nothing is replaced."""
    if not replace:
        taken = (f"{path} was written by another command while this one ran; nothing was replaced (give "
                 "--overwrite to replace it, or another name)")
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConfigError(taken) from None
        except OSError:                     # a file system without hard links: checked, then moved
            if os.path.exists(path):
                raise ConfigError(taken) from None
        else:
            os.remove(tmp)
            return
    os.replace(tmp, path)


def atomic_torch_save(obj, path: str) -> None:
    import torch    # here, not above: the tools' command lines import this module before torch
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


def atomic_save_npy(array, path: str, replace: bool = True) -> None:
    """np.save through a temporary file, so that a reader never sees half a matrix."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    try:
        np.save(tmp, array)
        publish(tmp, path, replace)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str, replace: bool = True) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        publish(tmp, path, replace)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(obj, path: str, replace: bool = True) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path, replace)
