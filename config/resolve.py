"""The layers of a config that need no model code: --init_from's network options, a resumed run's
config, absolute locations and the checks of an invocation. A new run's config, which the encoder
pair, layout and head complete, is resolved by `pairs.resolve` (above the registries).
"""

import os
import re

from errors import ConfigError
from .options import all_options, config_from_saved
from .recipes import read_recipe
from .schema import COMMAND, LOCATION, MODEL, RUNTIME, Config


def take_model_options(values: dict, given: dict, recipe: dict, init_cfg, path: str, options: dict) -> None:
    """--init_from: the network is the checkpoint's; an option or a recipe that says otherwise is an
    error."""
    for name, option in options.items():
        if option.role != MODEL:
            continue
        saved = getattr(init_cfg, name, None)
        if name in given and given[name] != saved:
            raise ConfigError(f"--{name} {given[name]} contradicts --init_from {path}, whose {name} is {saved}; "
                              f"drop --{name} or start from another checkpoint")
        if name in recipe and recipe[name] != saved:
            raise ConfigError(f"--recipe {given['recipe']} sets {name} {recipe[name]}, but --init_from {path} has "
                              f"{name} {saved}: the network is the checkpoint's; drop --recipe or start from another "
                              "checkpoint")
        values[name] = saved


def shown(value) -> str:
    return "unset" if value is None else str(value)


def absolute_locations(values: dict, options: dict) -> None:
    """Local folders and files as absolute paths, so that a run resumes and a checkpoint evaluates
    from any folder (hub names stay as they are)."""
    for name, option in options.items():
        value = values.get(name)
        if option.role == LOCATION and isinstance(value, str) and value and os.path.exists(value):
            values[name] = os.path.abspath(value)


def resumed_config(given: dict, saved: dict, path: str) -> Config:
    """A run continued from `path`: its saved config, with the command line's locations and runtime
    options; a given option that would change the training is an error naming both values."""
    options = all_options()
    cfg = config_from_saved(saved)
    changed = [name for name, value in given.items()
               if name in options and options[name].role not in (LOCATION, RUNTIME, COMMAND)
               and value != getattr(cfg, name)]
    if "recipe" in saved and given.get("recipe") not in (None, cfg.recipe):
        changed.insert(0, "recipe")
    if changed:
        described = ", ".join(f"--{name} {given[name]} (the run has {shown(getattr(cfg, name))})" for name in changed)
        raise ConfigError(f"--resume {given['resume']}: {described}; a resumed run keeps its training options "
                          f"(see {path}); start a new run, e.g. with --init_from, to change them")
    values = {**cfg.to_dict(), **given}
    absolute_locations(values, options)
    return Config(**values)


DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(device: str | None) -> None:
    """A --device that names no device is refused before torch is imported (torch checks the rest)."""
    if device is not None and not DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"--device {device!r} is not a device name (try auto, cpu, cuda, cuda:1)")


def check_val_split(val_split: str | None) -> None:
    """Selecting the model on the test set is refused (the reported test numbers would be optimistic)."""
    if val_split in ("test", "testall"):
        raise ConfigError(f"--val_split {val_split}: the model would be selected on the test set, which makes the "
                          "reported test numbers optimistic; validate on dev (Flickr30K images: val)")


def check_command(given: dict) -> None:
    """Combinations of what the invocation does that cannot work, before anything is read."""
    check_device_name(given.get("device"))
    if given.get("output_dir") == "":
        raise ConfigError("--output_dir must name a folder")
    if given.get("output_dir") and os.path.isfile(given["output_dir"]):
        raise ConfigError(f"--output_dir {given['output_dir']} is a file; give a folder for the run")
    recipe = read_recipe(given["recipe"], all_options()) if given.get("recipe") else {}   # checked before torch
    check_val_split(given.get("val_split") or recipe.get("val_split"))
    if given.get("resume") and given.get("overwrite"):
        raise ConfigError("--resume continues a run and --overwrite replaces it; give one of them")
    if given.get("resume") and given.get("init_from"):
        raise ConfigError("--resume continues a run with its own weights and optimiser; --init_from starts a new "
                          "one from a checkpoint's weights: give one of them")
