"""Any checkpoint we accept (ours or the authors'), in two steps: `read_checkpoint_config` reads its
config, tokenizer and backbone architecture and checks them against each other and the command
line, without building anything; `load_model` then builds the model with its weights. Callers
check the data between the two, so that a bad data file fails before the slow build."""

import os
from dataclasses import dataclass

import torch

from config.options import all_options, config_from_saved
from config.schema import Config
from datasets.captions import checkpoint_tokenizer
from datasets.layouts import LAYOUTS
from errors import CheckpointError, ConfigError
from modules.backbones import weights_from_checkpoint
from pairs import build_model, layout_of, pair_of
from . import hub, native as checkpoint
from .payload import Payload
from .released import (RELEASED_NAMES, build_released, read_checkpoint, region_backbone_config, released_config,
                       released_history)


def apply_overrides(cfg: Config, args) -> Config:
    """Data and tokenizer options given on the command line replace those saved with the checkpoint."""
    for name, option in all_options().items():
        value = getattr(args, name, None) if option.evaluation else None
        if value is not None:
            setattr(cfg, name, value)
    return cfg


def _not_other_kind(cfg: Config, pair, own: tuple = ()) -> str:
    """', not HINT' when data is given of a layout delivering what `pair` does not read (its options
    outside `own`), else ''."""
    given = [other.hint for other in LAYOUTS.values() if other.images != pair.reads
             and any(getattr(cfg, name, None) for name in other.required if name not in own)]
    return f", not {given[0]}" if given else ""


def check_data_options(cfg: Config, path: str) -> None:
    """The checkpoint's layout has all its data options, and the data given is of a layout its
    encoder pair reads."""
    pair = pair_of(cfg)
    try:
        layout = layout_of(cfg)
    except ConfigError as exc:
        hints = " or ".join(dict.fromkeys(other.hint for other in LAYOUTS.values() if other.images == pair.reads))
        raise ConfigError(f"checkpoint {path} is a {pair.name} model ({cfg.sim_head} on {pair.summary}): evaluate "
                          f"it with {hints}{_not_other_kind(cfg, pair)}") from exc
    if not all(getattr(cfg, name, None) for name in layout.required):
        wrong = _not_other_kind(cfg, pair, layout.option_names)
        if wrong:
            raise ConfigError(f"checkpoint {path} is a {pair.name} model ({cfg.sim_head} on {pair.summary}): "
                              f"evaluate it with {layout.hint}{wrong}")
        raise ConfigError(f"give {layout.hint} for checkpoint {path} ({pair.name}: {pair.summary}; the "
                          f"{layout.name} layout)")


@dataclass
class CheckpointConfig:
    """A checkpoint read but not built: its config (with the command line's data and tokenizer
    options), the tokenizer checked against its text tower, and what `load_model` needs."""

    path: str
    kind: str            # 'native' or the released format
    cfg: Config
    source: str          # which format and system, for the report
    history: str         # which state of which training run
    tokenizer: object
    backbone_config: dict
    payload: Payload | dict  # weights in memory; a training checkpoint's optimiser state left mapped, unread
                             # (a released file: the dict it holds)
    parts: list | None = None   # released formats: the key-rule parts
    file_state: tuple = ()      # (inode, size, mtime) when it was read


@dataclass
class LoadedModel:
    model: object        # Matcher on CPU, eval mode
    cfg: Config
    source: str
    tokenizer: object
    history: str

    def caption_encoder(self):
        """Captions -> token ids for this model: its tokenizer, cut to its text positions."""
        return pair_of(self.cfg).caption_encoder(self.cfg, self.tokenizer, self.model.text_tokens()["positions"])


def read_payload(path: str, training_state: bool = False) -> tuple[Payload | dict, tuple]:
    """The one reader of checkpoints, for evaluation, --init_from and resume: (payload, file state)
    of a model folder or a file of ours (a Payload, its format and version checked), or of an
    authors' released file (the dict it holds). Nothing is unpickled but plain tensors and values;
    a folder's files are checked against the hashes its config.json records. With `training_state`
    (resume) the optimiser state is read into memory too."""
    if os.path.isdir(path):
        inside = [name for name in ("model_best", "model_best.pth", "checkpoint_last.pth")
                  if os.path.exists(os.path.join(path, name))]
        if inside:
            raise CheckpointError(f"checkpoint {path} is a training run's folder; give the checkpoint in it "
                                  f"({os.path.join(path, inside[0])})")
        state = hub.file_state(path) if hub.is_folder(path) else ()
        return hub.read_folder(path), state
    file_state = _file_state(path) if os.path.isfile(path) else ()
    payload = _weights_in_memory(read_checkpoint(path), training_state)
    return (Payload.from_dict(payload, path) if Payload.is_ours(payload) else payload), file_state


def read_checkpoint_config(path: str, args, require_data: bool = True) -> CheckpointConfig:
    """Read a checkpoint's config and tokenizer (the weights are not mapped yet). Without
    `require_data` (--init_from, tools on own collections) its data options may be absent."""
    payload, file_state = read_payload(path)
    snapshot = None
    if isinstance(payload, Payload):
        cfg = apply_overrides(_clear_foreign_data(config_from_saved(payload.config), args), args)
        kind, parts, backbone, snapshot = "native", None, payload.backbone_config, payload.tokenizer
        source, history = f"dimmatch checkpoint ({cfg.encoders} + {cfg.sim_head})", native_history(payload)
    else:
        kind, cfg, parts, backbone = released_config(path, payload, args)
        cfg = apply_overrides(_clear_foreign_data(cfg, args), args)
        backbone = backbone or region_backbone_config(cfg, path)
        source, history = f"released {RELEASED_NAMES[kind]} checkpoint", released_history(payload)
    if require_data:
        check_data_options(cfg, path)
    pair = pair_of(cfg)
    # the checkpoint's own tokenizer, or the one a path names; a path given on the command line must
    # agree with the one the checkpoint carries, and without one (released formats, our format 1) the
    # path is the only source, so it is at least checked against the embedding table
    tokenizer = checkpoint_tokenizer(pair.text_kind, pair.backbone_option, snapshot, pair.text_tokens(backbone),
                                     f"checkpoint {path}", given=getattr(args, pair.backbone_option, None),
                                     named=getattr(cfg, pair.backbone_option))
    return CheckpointConfig(path, kind, cfg, source, history, tokenizer, backbone, payload, parts, file_state)


def _weights_in_memory(payload, training_state: bool = False):
    """The payload with its weights copied out of the mapped file at once: a file cut short later
    (a `cp` over it) can then only be refused, never fault the process in the middle of loading.
    A training checkpoint's optimiser state stays mapped and is never read."""
    def copied(value):
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, dict):
            return {key: copied(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copied(item) for item in value)
        return value
    if Payload.is_ours(payload):
        return {key: value if key == "optimizer" and not training_state else copied(value)
                for key, value in payload.items()}
    return copied(payload)


def _file_state(path: str) -> tuple:
    if os.path.isdir(path):
        return hub.file_state(path) if hub.is_folder(path) else ()
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def load_model(read: CheckpointConfig) -> LoadedModel:
    """The model of a checkpoint read by `read_checkpoint_config`, with its weights, in eval mode."""
    with weights_from_checkpoint():
        if read.kind == "native":
            model = build_model(read.cfg, backbone_config=read.backbone_config)
            checkpoint.load_weights(model, read.payload.model, read.path)
        else:
            model = build_released(read.path, read.kind, read.cfg, read.parts, read.backbone_config)
    # the file must still be the one read: its hash, taken since, is what records name these weights by
    if not os.path.exists(read.path) or _file_state(read.path) != read.file_state:
        raise CheckpointError(f"checkpoint {read.path} was replaced or changed while it was being read; "
                              "run again once it is written")
    model.eval()
    return LoadedModel(model, read.cfg, read.source, read.tokenizer, read.history)


def native_history(payload: Payload) -> str:
    """Which state of which run a checkpoint of ours holds, for the evaluation report."""
    progress = payload.progress
    if progress is None:
        converted = payload.converted_from if payload.converted_from is not None else "a released checkpoint"
        return f"converted from {converted}"
    text = f"epoch {progress['epoch']}, step {progress['step_in_epoch']} of {progress['steps_per_epoch']} " \
           f"(global step {progress['global_step']})"
    metrics = payload.metrics
    if metrics is not None:
        return text + f", validation rSum {metrics['rsum']:.1f} ({payload.config.get('val_split')})"
    if progress.get("best_rsum") is not None and progress["best_rsum"] > float("-inf"):
        return text + f", not validated at this step (best validation rSum so far {progress['best_rsum']:.1f})"
    return text + ", not validated yet"


def _clear_foreign_data(cfg: Config, args) -> Config:
    """Data options of layouts that deliver one kind of images (region features or image files)
    given on the command line clear the saved ones of the other kind, so a saved data_name cannot
    linger next to a --dataset the user gave; with both kinds given (an ensemble of region and CLIP
    models) each model keeps what it needs. Data options given without --layout let them select
    the layout again (--dataset coco for a model trained on f30k)."""
    given = {layout.images for layout in LAYOUTS.values()
             if any(getattr(args, name, None) is not None for name in layout.option_names)}
    if len(given) == 1:
        for layout in LAYOUTS.values():
            if layout.images not in given:
                for name in layout.option_names:
                    setattr(cfg, name, None)
    if given and getattr(args, "layout", None) is None:
        cfg.layout = None
    return cfg
