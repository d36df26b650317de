"""Our checkpoint files at the lowest level: `weights_only` loading with one-line errors, and a strict
load of weights into a model. What a checkpoint holds, its format and version, and how it is written are
checkpoints.payload's; checkpoints.loading.read_payload is the reader every command uses."""

import os
import pickle
import zipfile

import torch

from errors import CheckpointError, first_line


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
