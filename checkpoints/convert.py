"""Conversions between checkpoint forms: an authors' released file or a `.pth` of ours to a model
folder (`--format hub`), or a released file or a model folder to a `.pth` of ours (`--format pth`)."""

import dataclasses
import os

from datasets.captions import tokenizer_snapshot
from errors import CheckpointError
from . import hub
from .card import model_card
from .loading import load_model, read_checkpoint_config
from .payload import Payload

FORMATS = ("pth", "hub")


def convert(path: str, out_path: str, args, form: str = "pth", replace: bool = False) -> str:
    """Write the checkpoint `path` (released or ours) as `form`; weights only, like model_best.
    Returns what was read, for the report."""
    read = read_checkpoint_config(path, args, require_data=False)
    if read.kind == "native" and form == "pth" and not os.path.isdir(path):
        raise CheckpointError(f"{path} is already a .pth of ours ({read.cfg.encoders} + {read.cfg.sim_head}); test.py "
                              "and testall.py read it as it is (--format hub turns it into a model folder)")
    loaded = load_model(read)
    if read.kind == "native":
        # ours: the payload as it was (progress, metrics and data identities kept), without the training state
        payload = dataclasses.replace(read.payload.weights_only(), model=loaded.model.state_dict())
    else:
        payload = Payload.of_model(read.cfg, loaded.model, tokenizer_snapshot(loaded.tokenizer, loaded.model.text_kind),
                                   converted_from=path, source=read.source)
    if form == "hub":
        hub.save_folder(out_path, payload, card=model_card(payload, read.cfg, out_path), replace=replace)
    else:
        payload.save(out_path)
    return read.source
