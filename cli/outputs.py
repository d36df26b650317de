"""Where the programs write, checked before any work starts, so that no run is overwritten and
no result is computed only to fail at the moment it is saved."""

import os
import shutil

from errors import ConfigError

# what train.py writes into --output_dir (and --overwrite replaces)
RUN_FILES = ("checkpoint_last.pth", "model_best.pth", "best_metrics.json", "config.json", "train.log")
RUN_FOLDERS = ("tensorboard",)


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _check_writable_folder(folder: str, option: str, given: str) -> None:
    existing = _existing_ancestor(folder)
    if not os.path.isdir(existing):
        raise ConfigError(f"{option} {given}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {given}: {existing} is not writable")


def check_output_dir(output_dir: str, resume: str, overwrite: bool) -> None:
    """A used run folder is continued only with --resume, replaced only with --overwrite."""
    if os.path.isfile(output_dir):
        raise ConfigError(f"--output_dir {output_dir} is a file; give a folder for the run")
    _check_writable_folder(output_dir, "--output_dir", output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not resume and not overwrite:
        raise ConfigError(f"--output_dir {output_dir} already holds a run; continue it with --resume auto, "
                          "replace it with --overwrite, or choose another folder")


def clear_previous_run(output_dir: str) -> None:
    """--overwrite: remove what an earlier run wrote there (and nothing else)."""
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            os.remove(path)
    for name in RUN_FOLDERS:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def check_output_file(path: str, option: str, suffix: str) -> None:
    """A file we will write at the end: right suffix, not a folder, its folder writable."""
    if not path.endswith(suffix):
        raise ConfigError(f"{option} {path} must end in {suffix}")
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path} is a folder; give a file name ending in {suffix}")
    _check_writable_folder(os.path.dirname(os.path.abspath(path)), option, path)
