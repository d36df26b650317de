"""huggingface_hub's model interface for our checkpoints: `from_pretrained` (a model folder, a
hub name found in the HuggingFace cache or downloaded, or any file test.py reads),
`save_pretrained` (a model folder) and `push_to_hub`.

    from checkpoints.pretrained import PretrainedMatcher
    matcher = PretrainedMatcher.from_pretrained("ORG/NAME", revision="main", local_files_only=True)
    matcher.model, matcher.tokenizer, matcher.cfg       # the Matcher (eval mode), its tokenizer and config
    matcher.save_pretrained("xdim_f30k"); matcher.push_to_hub("ORG/NAME")
"""

import argparse
import tempfile

from datasets.captions import tokenizer_snapshot
from . import hub
from .card import model_card
from .loading import LoadedModel, load_model, read_checkpoint_config
from .payload import Payload


class PretrainedMatcher:
    """A loaded model with what rebuilds it (config, backbone architecture, tokenizer, the run's record)."""

    def __init__(self, loaded: LoadedModel, payload: Payload | dict):
        self.loaded = loaded
        self.model, self.cfg, self.tokenizer = loaded.model, loaded.cfg, loaded.tokenizer
        # the run's record (progress, metrics, data) or where it was converted from; an authors' released file has none
        self.record = payload.record() if isinstance(payload, Payload) else {}

    @classmethod
    def from_pretrained(cls, name: str, revision: str | None = None, local_files_only: bool = False,
                        **options) -> "PretrainedMatcher":
        """`options` are the data and tokenizer options test.py takes (bert_path=..., ...)."""
        path = hub.resolve(name, "from_pretrained", revision=revision, local_files_only=local_files_only)
        read = read_checkpoint_config(path, argparse.Namespace(**options), require_data=False)
        return cls(load_model(read), read.payload)

    def payload(self) -> Payload:
        tokenizer = tokenizer_snapshot(self.tokenizer, self.model.text_kind)
        return Payload.of_model(self.cfg, self.model, tokenizer, **self.record)

    def save_pretrained(self, folder: str, replace: bool = True) -> str:
        """Write the model folder; returns its content hash."""
        payload = self.payload()
        return hub.save_folder(folder, payload, card=model_card(payload, self.cfg, folder), replace=replace)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        with tempfile.TemporaryDirectory() as folder:
            payload = self.payload()
            hub.save_folder(folder + "/model", payload, card=model_card(payload, self.cfg, repo_id))
            return hub.push_to_hub(folder + "/model", repo_id, private=private, token=token)
