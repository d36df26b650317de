"""Configs of new runs built the way train.py builds them, for tests that construct a Trainer
directly (test_distributed.py, ddp_worker.py)."""

from config.parsers import train_parser
from config.resolve import check_command
from pairs.resolve import resolve_train_config
from config.schema import Config


def train_config(argv) -> Config:
    """The config of a new run from train.py's arguments (no --resume, no --init_from)."""
    given = vars(train_parser().parse_args(argv))
    check_command(given)
    return resolve_train_config(given)
