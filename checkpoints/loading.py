"""Build a ready-to-evaluate model from any checkpoint we accept (ours or the authors')."""

from . import native as checkpoint
from config import Config
from errors import ConfigError
from modules.model import build_model

REGION_DATA = ("data_path", "data_name")
RAW_IMAGE_DATA = ("dataset", "image_root", "ann_path")
DATA_OPTIONS = REGION_DATA + RAW_IMAGE_DATA


def apply_overrides(cfg: Config, args) -> Config:
    """Command-line data/tokenizer paths replace those saved with the checkpoint."""
    for key in DATA_OPTIONS + ("bert_path", "clip_path", "img_dim"):
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


def load_for_evaluation(path: str, args) -> tuple:
    """(model on CPU in eval mode, resolved config, description of the source)."""
    from .released import load_released, read_checkpoint
    payload = read_checkpoint(path)
    if checkpoint.is_native(payload):
        cfg = Config(**payload["config"])
        cfg = apply_overrides(_clear_foreign_data(cfg, args), args)
        model = build_model(cfg, backbone_config=payload["backbone_config"])
        checkpoint.load_weights(model, payload["model"], path)
        source = f"dimmatch checkpoint ({cfg.encoders} + {cfg.sim_head})"
    else:
        cfg, model, source = load_released(path, args, payload)
        cfg = apply_overrides(_clear_foreign_data(cfg, args), args)
    check_data_options(cfg, path)
    model.eval()
    return model, cfg, source


def _clear_foreign_data(cfg: Config, args) -> Config:
    """Data options of one family given on the command line clear the saved ones of the other
    family, so a saved data_name cannot linger next to a --dataset the user gave."""
    for given, other in ((REGION_DATA, RAW_IMAGE_DATA), (RAW_IMAGE_DATA, REGION_DATA)):
        if any(getattr(args, key, None) is not None for key in given):
            for key in other:
                setattr(cfg, key, None)
    return cfg
