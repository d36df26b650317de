"""Command-line options with the released defaults, resolved into one saved config."""

from .options import (MODEL_KEYS, Config, eval_parser, resolve_train_config, train_parser)

__all__ = ["Config", "MODEL_KEYS", "eval_parser", "resolve_train_config", "train_parser"]
