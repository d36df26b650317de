"""Build a ready-to-evaluate model from any checkpoint we accept (ours or the authors')."""

import os
from dataclasses import dataclass

from config import Config
from datasets.captions import caption_encoder_for, check_tokenizer, load_tokenizer, tokenizer_from_snapshot
from errors import CheckpointError, ConfigError
from modules.model import build_model
from . import native as checkpoint

REGION_DATA = ("data_path", "data_name")
RAW_IMAGE_DATA = ("dataset", "image_root", "ann_path")
DATA_OPTIONS = REGION_DATA + RAW_IMAGE_DATA


def apply_overrides(cfg: Config, args) -> Config:
    """Command-line data/tokenizer paths replace those saved with the checkpoint."""
    for key in DATA_OPTIONS + ("bert_path", "clip_path", "img_dim", "clip_truncation", "clip_text_cleaning",
                                "truncated_images"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def check_data_options(cfg: Config, path: str) -> None:
    if cfg.encoders == "region_bert":
        if getattr(cfg, "dataset", None) and not getattr(cfg, "data_name", None):
            raise ConfigError(f"checkpoint {path} is a region model ({cfg.sim_head} on BUTD regions): evaluate "
                              f"it with --data_path/--data_name, not --dataset raw images")
        if not cfg.data_path or not cfg.data_name:
            raise ConfigError("give --data_path and --data_name (f30k_precomp or coco_precomp)")
    else:
        if getattr(cfg, "data_name", None) and not getattr(cfg, "dataset", None):
            raise ConfigError(f"checkpoint {path} is an ESL-CLIP model: evaluate it on raw images with "
                              f"--dataset/--image_root/--ann_path, not --data_name")
        if not (cfg.dataset and cfg.image_root and cfg.ann_path):
            raise ConfigError("give --dataset (f30k or coco), --image_root and --ann_path")


@dataclass
class LoadedModel:
    model: object        # Matcher on CPU, eval mode
    cfg: Config          # the checkpoint's config with the command line's data/backbone options
    source: str          # which format and system
    tokenizer: object
    history: str         # which state of which training run
    data: object         # what `check_data` returned, before the model was built

    def caption_encoder(self):
        """Captions -> token ids for this model: its tokenizer, cut to its text positions."""
        return caption_encoder_for(self.cfg, self.tokenizer, self.model.text_tokens()["positions"])


def load_for_evaluation(path: str, args, check_data=None, require_data: bool = True) -> LoadedModel:
    """Any checkpoint we accept, ready to evaluate (or to start training from, without its data
    options: `require_data=False`). `check_data(cfg)` runs once the data options are known and
    before the (slow) model build, so bad data fails first."""
    from .released import load_released, read_checkpoint, released_history
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file (e.g. {path}/model_best.pth)")
    payload = read_checkpoint(path)
    data = []

    def prepare(cfg: Config) -> Config:
        cfg = apply_overrides(_clear_foreign_data(cfg, args), args)
        if require_data:
            check_data_options(cfg, path)
        data.append(check_data(cfg) if check_data is not None else None)
        return cfg

    if checkpoint.is_native(payload):
        checkpoint.check_version(payload, path)
        cfg = prepare(checkpoint.saved_config(payload))
        model = build_model(cfg, backbone_config=payload["backbone_config"])
        checkpoint.load_weights(model, payload["model"], path)
        source = f"dimmatch checkpoint ({cfg.encoders} + {cfg.sim_head})"
        history = native_history(payload)
    else:
        cfg, model, source = load_released(path, args, payload, prepare)
        history = released_history(payload)
    tokenizer = evaluation_tokenizer(model, cfg, args, payload.get("tokenizer"), path)
    model.eval()
    return LoadedModel(model, cfg, source, tokenizer, history, data[0])


def evaluation_tokenizer(model, cfg, args, snapshot: dict | None, path: str):
    """The checkpoint's own tokenizer, or the one a path names, checked against the model.

    A path given on the command line must agree with the tokenizer the checkpoint carries;
    without one (released formats, our format 1) the path is the only source, so it is at
    least checked against the embedding table before anything is encoded."""
    kind = model.text_kind
    option = "--clip_path" if kind == "clip" else "--bert_path"
    override = getattr(args, option[2:], None)
    reference = tokenizer_from_snapshot(snapshot) if snapshot is not None else None
    if override is None and reference is not None:
        check_tokenizer(reference, kind, model.text_tokens(), f"checkpoint {path}")
        return reference
    name = override or getattr(cfg, option[2:])
    try:
        tokenizer = load_tokenizer(kind, name)
    except ConfigError as exc:
        if override is None:
            raise ConfigError(f"checkpoint {path} carries no tokenizer, and the one it names is not found: "
                              f"{exc}") from exc
        raise
    check_tokenizer(tokenizer, kind, model.text_tokens(), f"{option} {name}", reference=reference)
    return tokenizer


def native_history(payload: dict) -> str:
    """Which state of which run a checkpoint of ours holds, for the evaluation report."""
    progress = payload.get("progress")
    if progress is None:
        return f"converted from {payload.get('converted_from', 'a released checkpoint')}"
    text = f"epoch {progress['epoch']}, step {progress['step_in_epoch']} of {progress['steps_per_epoch']} " \
           f"(global step {progress['global_step']})"
    metrics = payload.get("metrics")
    if metrics is not None:
        return text + f", validation rSum {metrics['rsum']:.1f} ({payload['config'].get('val_split')})"
    if progress.get("best_rsum") is not None and progress["best_rsum"] > float("-inf"):
        return text + f", not validated at this step (best validation rSum so far {progress['best_rsum']:.1f})"
    return text + ", not validated yet"


def _clear_foreign_data(cfg: Config, args) -> Config:
    """Data options of only one family given on the command line clear the saved ones of the
    other family, so a saved data_name cannot linger next to a --dataset the user gave. With
    both families given (an ensemble of region and CLIP models) each model keeps what it needs."""
    def given(keys):
        return any(getattr(args, key, None) is not None for key in keys)
    for family, other in ((REGION_DATA, RAW_IMAGE_DATA), (RAW_IMAGE_DATA, REGION_DATA)):
        if given(family) and not given(other):
            for key in other:
                setattr(cfg, key, None)
    return cfg
