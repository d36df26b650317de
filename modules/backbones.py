"""Where a BERT / CLIP backbone comes from: a local folder, the HuggingFace cache, or the hub.

transformers, given a name it cannot resolve, either retries the network for minutes or (for
some tokenizers) returns a near-empty vocabulary without raising. Every `--bert_path` /
`--clip_path` is therefore resolved here first, to a local folder that holds a config, and any
failure is one line saying what was not found and how to point to a local copy.
"""

import contextlib
import os
import socket
from urllib.parse import urlparse

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from errors import ConfigError, first_line

# what a backbone folder needs: the config and weights for the model, plus the tokenizer files
DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
CONNECT_TIMEOUT_S = 5


def _looks_like_a_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else can only be a folder."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def _hub_unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached right now, or None; decided in seconds, without retries."""
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def resolve_backbone(name: str, option: str, need_config: bool = True) -> str:
    """The local folder of the backbone `name` (a folder, or a hub id found in or fetched into
    the cache). `option` is the command-line flag it came from, for the error messages. Without
    `need_config` a folder holding only tokenizer files is accepted (the weights and architecture
    come from a checkpoint)."""
    path = os.path.expanduser(name)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{option} {name} is a file; give the folder that holds config.json and the "
                              "tokenizer files (as written by save_pretrained)")
        if need_config and not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"{option} {name} has no config.json: not a transformers model folder")
        return path
    if _looks_like_a_path(name):
        raise ConfigError(f"{option} {name}: no such folder (relative paths are read from {os.getcwd()})")

    return hub_snapshot(name, option, allow_patterns=DOWNLOAD_PATTERNS,
                        how=f"give a local copy ({option} DIR, a folder written by save_pretrained)")


def hub_snapshot(repo_id: str, option: str, how: str, revision: str | None = None, local_files_only: bool = False,
                 allow_patterns: list | None = None, what: str = "a folder") -> str:
    """The local folder of hub repository `repo_id` at `revision`: from the HuggingFace cache, else
    downloaded (unless offline or `local_files_only`); every failure is one line ending in `how`."""
    shown = repo_id + (f"@{revision}" if revision else "")
    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    where = f"{option} {shown} is neither {what} here ({os.getcwd()}) nor in the HuggingFace cache"
    if constants.HF_HUB_OFFLINE or local_files_only:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "only local files are allowed"
        raise ConfigError(f"{where}, and {reason}: {how}, or download it once online")
    reason = _hub_unreachable(constants.ENDPOINT)
    if reason is not None:
        raise ConfigError(f"{where}, and {constants.ENDPOINT} cannot be reached ({reason}): {how}")
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConfigError(f"{option} {shown} could not be downloaded ({first_line(exc)}): {how}") from exc


@contextlib.contextmanager
def weights_from_checkpoint():
    """Backbones built inside skip transformers' random weight initialisation (2 s for CLIP ViT-B/16,
    1 s for BERT-base on 2 CPU cores), for a model whose every parameter and persistent buffer is then
    loaded, strictly, from a checkpoint. Buffers that __init__ computes (position ids) are built as
    always; the loaded model equals one built the usual way (tested)."""
    # transformers 5 moved it; imported where it is used, in whichever place this version has it
    try:
        from transformers.initialization import no_init_weights
    except ImportError:                     # transformers 4
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        yield
