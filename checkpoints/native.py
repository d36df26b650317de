"""Our checkpoint format: atomic writes, `weights_only` loading, one-line errors."""

import os
import pickle
import zipfile

import torch

from errors import CheckpointError, first_line
from .atomic import atomic_torch_save

FORMAT = "dimmatch"
# 1: weights, config, backbone config; 2: also the tokenizer's files (evaluates anywhere, offline)
VERSION = 2
READABLE_VERSIONS = (1, 2)


def make_payload(cfg, model, tokenizer: dict | None, progress: dict | None = None, metrics: dict | None = None,
                 data: dict | None = None, **extra) -> dict:
    """What every checkpoint of ours holds (a training run's, a converted one's), in a file or a
    model folder: the config that rebuilds the model, its backbone architecture, the tokenizer's
    files, the weights, and what the run knew (progress, validation metrics, data identities).
    checkpoint_last adds the optimiser, scaler and RNG states (training.state)."""
    return {"config": cfg.to_dict(), "backbone_config": model.backbone_config(), "tokenizer": tokenizer,
            "model": model.state_dict(), "progress": progress, "metrics": metrics, "data": data, **extra}


def save(path: str, payload: dict) -> None:
    try:
        atomic_torch_save({"format": FORMAT, "version": VERSION, **payload}, path)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path} ({exc.strerror or exc}); "
                              "the previous file, if any, is intact") from exc


def read_file(path: str, weights_only: bool = True, **kwargs) -> dict:
    """torch.load with the failures users meet turned into one-line errors."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted copy?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raises, the file is not a checkpoint we read
        message = first_line(exc)
        if isinstance(exc, (EOFError, OSError, zipfile.BadZipFile)) or "zip archive" in message \
                or "central directory" in message:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({message}); copy it again") from exc
        if "Weights only load failed" in message or isinstance(exc, (pickle.UnpicklingError, IndexError,
                                                                         KeyError, TypeError)):
            raise CheckpointError(f"checkpoint {path} cannot be read: it is not a PyTorch checkpoint of plain "
                                  "tensors and values (code in a checkpoint is never loaded)") from exc
        raise CheckpointError(f"checkpoint {path} cannot be read: {message}") from exc


def is_native(payload) -> bool:
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def check_version(payload: dict, path: str) -> None:
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}; this code reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")


def load_weights(model: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Strict load, reported in one line when keys or shapes do not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [key for key in own if key in state_dict and own[key].shape != state_dict[key].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(parts))
    model.load_state_dict(state_dict)
