"""From a command line to the one training config a run saves (config.json) and checkpoints carry.

Layers, each overriding the one before: the schema's defaults; the encoder pair's released recipe
(its `default_recipe`); `--recipe NAME`; the options given on the command line. Then what follows
from other options is derived by the data layout, the encoder pair and the head, and every value
is checked. An `--init_from` run takes the network options of its checkpoint (config.resolve).
"""

import os

from config.options import all_options
from config.recipes import read_recipe
from config.resolve import absolute_locations, check_val_split, take_model_options
from config.schema import Config
from errors import ConfigError
from modules.heads import HEADS
from modules.losses import LOSSES
from datasets.layouts import LAYOUTS
from . import PAIRS, layout_for


def check_other_layouts_options(layout, given: dict, recipe: dict) -> None:
    """Data options of another layout than the one the run reads would be recorded in its config
    and read by nobody: a mistake (a region run given --dataset), refused."""
    own = set(layout.option_names)
    for other in LAYOUTS.values():
        for name in other.option_names:
            if name not in own and (given.get(name) is not None or recipe.get(name) is not None):
                raise ConfigError(f"--{name} is a data option of the {other.name} layout, but this run reads the "
                                  f"{layout.name} layout ({layout.hint}); drop --{name}, or give --layout {other.name} "
                                  "with encoders that read it")


def resolve_train_config(given: dict, init_cfg=None) -> Config:
    """The config of a new run from the options `given` on the command line (and, with
    --init_from, the config `init_cfg` of its checkpoint)."""
    options = all_options()
    values = {name: option.default for name, option in options.items()}
    recipe = read_recipe(given["recipe"], options) if given.get("recipe") else {}
    encoders = (init_cfg.encoders if init_cfg is not None else None) or given.get("encoders") \
        or recipe.get("encoders") or values["encoders"]
    if recipe.get("encoders", encoders) != encoders:
        raise ConfigError(f"--recipe {given['recipe']} trains {recipe['encoders']} encoders, not {encoders}")
    pair = PAIRS[encoders]
    values.update(read_recipe(pair.default_recipe, options))
    values.update(recipe)
    values.update(given)
    if init_cfg is not None:
        take_model_options(values, given, recipe, init_cfg, given["init_from"], options)
    for name, value in values.items():
        options[name].check(value)
    layout = layout_for(pair, values)
    check_other_layouts_options(layout, given, recipe)
    values["layout"] = layout.name
    layout.resolve(values, set(given) | set(recipe))
    pair.resolve(values, set(given) | set(recipe))
    head = HEADS[values["sim_head"]]
    if head.resolve is not None:
        head.resolve(values)

    if LOSSES[values["loss"]].needs_logit_scale and not pair.logit_scale:
        raise ConfigError(f"--loss {values['loss']} needs CLIP's logit scale; use --loss hinge with {encoders} "
                          "encoders")
    check_val_split(values["val_split"])
    if values["batch_size"] < 2:
        raise ConfigError("--batch_size must be at least 2: the losses need negatives in the batch")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if values["batch_size"] % world:
        raise ConfigError(f"--batch_size {values['batch_size']} (global) is not divisible by the {world} processes")
    absolute_locations(values, options)
    return Config(**values)
