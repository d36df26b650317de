"""Checkpoints as hub-style model folders: what anyone can publish, read without running pickled
code, and load by name.

    FOLDER/config.json          the payload without its tensors: format, version, the typed config that
                                rebuilds the model, the backbone architecture, progress, validation
                                metrics, data identities, and the SHA-256 of every other file
    FOLDER/model.safetensors    the weights (safetensors: tensors and a JSON header, no pickle)
    FOLDER/<tokenizer files>    as the tokenizer's save_pretrained writes them (vocab.txt, tokenizer.json, ...)
    FOLDER/README.md            a model card filled from the run

The layout is huggingface_hub's (`PyTorchModelHubMixin` writes config.json + model.safetensors +
README.md), written by hand rather than through the mixin: the mixin rebuilds a model as
`cls(**config)` with random initialisation and a strict load, while ours must be rebuilt from a
typed config plus a backbone architecture without initialising the backbone, with its tokenizer,
checked against recorded hashes, and through the same reader as our `.pth` files and the authors'
released ones. Resolution by name (`ORG/NAME`, `ORG/NAME@REVISION`) and publishing go through
huggingface_hub's own cache and API, so a folder in the cache is found offline.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from errors import CheckpointError, ConfigError, first_line
from modules.backbones import hub_snapshot
from provenance import FOLDER_FILES, content_sha256, file_sha256
from .payload import FORMAT, VERSION, Payload

CONFIG, WEIGHTS = FOLDER_FILES
CARD = "README.md"
OWN_FILES = (CONFIG, WEIGHTS, CARD)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


# --------------------------------------------------------------------------- names
def is_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG))


def resolve(name: str, option: str = "--checkpoint", revision: str | None = None,
            local_files_only: bool = False) -> str:
    """The local file or folder of a checkpoint: `name` itself when it exists here, else a hub
    name (`ORG/NAME`, optionally `@REVISION`) found in the HuggingFace cache or, when allowed,
    downloaded into it. Anything else is one line saying what was looked for."""
    if name is None or os.path.exists(os.path.expanduser(name)) or not HUB_NAME.match(name):
        return name if name is None else os.path.expanduser(name)   # a path: its reader says what is wrong
    repo_id, _, at = name.partition("@")
    folder = hub_snapshot(repo_id, option, revision=revision or at or None, local_files_only=local_files_only,
                          what="a file or folder", how="give a local folder or file")
    if not is_folder(folder):
        raise CheckpointError(f"{option} {name} ({folder}) is not a dimmatch model folder: it has no {CONFIG}")
    return folder


# --------------------------------------------------------------------------- writing
def save_folder(folder: str, payload: Payload, card: str | None = None, replace: bool = True) -> str:
    """Write `payload` (without its training state) as a model folder,
    atomically: the folder is built beside its place and moved in whole, so a reader sees the old
    folder or the complete new one. Returns the folder's content hash."""
    folder = os.path.abspath(folder.rstrip("/"))
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    _remove_stale(folder)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        weights = {key: value.detach().to("cpu").contiguous().clone() for key, value in payload.model.items()}
        tokenizer = payload.tokenizer
        tokenizer_files = {}
        for name, text in sorted((tokenizer or {}).get("files", {}).items()):
            name = os.path.basename(name)
            if name in OWN_FILES:
                raise CheckpointError(f"the tokenizer has a file named {name}, which the model folder uses itself")
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
                handle.write(text)
            tokenizer_files[name] = file_sha256(os.path.join(tmp, name))
        meta = {key: value for key, value in payload.to_dict(training_state=False).items()
                if key not in ("model", "tokenizer")}
        meta.update(format=FORMAT, version=VERSION, layout="folder",
                    tokenizer={"kind": tokenizer["kind"], "files": tokenizer_files} if tokenizer else None)
        # config.json records the weights' hash and the weights record the config's (all but that
        # entry): an edited config.json (a backbone's activation, say) is refused, not silently used
        save_file(weights, os.path.join(tmp, WEIGHTS), metadata={"format": "pt", "library": FORMAT,
                                                                 "config_sha256": config_sha256(meta)})
        os.chmod(os.path.join(tmp, WEIGHTS), 0o644)
        meta["weights"] = {"file": WEIGHTS, "sha256": file_sha256(os.path.join(tmp, WEIGHTS))}
        _write_text(os.path.join(tmp, CONFIG), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        digest = folder_sha256(tmp)
        if card is not None:
            _write_text(os.path.join(tmp, CARD), card.replace("{content_sha256}", digest))
        os.chmod(tmp, 0o755)
        _move_in(tmp, folder, replace)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return digest


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _move_in(tmp: str, folder: str, replace: bool) -> None:
    """Move the complete folder `tmp` to `folder`; an existing one is set aside first and removed
    after (only with `replace`)."""
    if os.path.exists(folder):
        if not replace:
            raise ConfigError(f"{folder} was written by another command while this one ran; nothing was replaced "
                              "(give --overwrite to replace it, or another name)")
        check_replaceable(folder)
        aside = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=os.path.dirname(folder))
        os.rmdir(aside)
        os.rename(folder, aside)
        os.rename(tmp, folder)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.rename(tmp, folder)


def check_replaceable(folder: str) -> None:
    """--overwrite replaces a model folder of ours holding only its own files, never a user's folder
    (another library's, a backbone) nor a file a user added to a model folder."""
    foreign = _foreign_files(folder)
    if foreign is None:
        raise ConfigError(f"{folder} is not a dimmatch model folder (its {CONFIG}, if any, is not ours); "
                          "--overwrite replaces only a model folder: move it away, or give another name")
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ConfigError(f"{folder} holds {foreign[0]}{more}, which is not a file of its model; --overwrite would "
                          "delete it: move it out first, or give another name")


def _foreign_files(folder: str) -> list[str] | None:
    """The entries of a model folder of ours that are not its files (config.json, the weights, the
    card, the tokenizer files it records), or None when `folder` is not a model folder of ours."""
    try:
        meta = read_meta(folder)
    except CheckpointError:
        return None
    own = {*OWN_FILES, *(meta.get("tokenizer") or {}).get("files", {})}
    return sorted(name for name in os.listdir(folder) if name not in own)


def _remove_stale(folder: str) -> None:
    """Leftovers of a write into `folder` that was killed half-way (no process writes two at once:
    callers hold the folder's run lock or write a new name)."""
    parent, base = os.path.dirname(folder), os.path.basename(folder)
    for entry in os.listdir(parent):
        if entry.startswith((f".{base}.tmp-", f".{base}.old-")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


# --------------------------------------------------------------------------- reading
def folder_sha256(folder: str) -> str:
    """A folder's content hash (config.json, which records every other file's hash, and the
    weights): what provenance records name a folder by."""
    return content_sha256(folder)


def read_meta(folder: str) -> dict:
    path = os.path.join(folder, CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {folder} is a folder without {CONFIG}: give a model folder written by "
                              "train.py or tools/convert_checkpoint.py --format hub, or a checkpoint file")
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({first_line(exc)})") from exc
    if not Payload.is_ours(meta) or meta.get("layout") != "folder" or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{folder} is not a dimmatch model folder ({CONFIG} is another library's)")
    Payload.check_version(meta, folder)
    return meta


def _verified(folder: str, name: str, recorded: str | None) -> str:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {folder} lacks {name}, which its {CONFIG} lists; copy the whole folder")
    found = file_sha256(path)
    if found != recorded:
        raise CheckpointError(f"checkpoint {folder}: {name} is not the file its {CONFIG} records (sha256 "
                              f"{str(recorded)[:12]}, found {found[:12]}); it was changed or damaged, copy it again")
    return path


def config_sha256(meta: dict) -> str:
    """The hash of a folder's config.json contents less its record of the weights (which hold it)."""
    text = json.dumps({key: value for key, value in meta.items() if key != "weights"}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_folder(folder: str) -> Payload:
    """The payload of a model folder, every file checked against the hashes its config.json records;
    the weights are read into memory (safetensors: no code is ever run)."""
    meta = read_meta(folder)
    weights = meta.get("weights")
    if not isinstance(weights, dict) or not weights.get("sha256"):
        raise CheckpointError(f"{os.path.join(folder, CONFIG)} records no weights (its 'weights' entry is missing "
                              "or incomplete): it was edited; copy the model folder again")
    path = _verified(folder, weights.get("file", WEIGHTS), weights.get("sha256"))
    try:
        model = load_file(path)
        with safe_open(path, "pt") as handle:
            recorded_config = (handle.metadata() or {}).get("config_sha256")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({first_line(exc)}); copy it again") from exc
    if recorded_config != config_sha256(meta):
        raise CheckpointError(f"{os.path.join(folder, CONFIG)} is not the config the weights were saved with (it was "
                              "edited or comes from another folder); copy the model folder again")
    tokenizer = None
    if meta.get("tokenizer"):
        files = {}
        for name, recorded in meta["tokenizer"]["files"].items():
            with open(_verified(folder, name, recorded), encoding="utf-8") as handle:
                files[name] = handle.read()
        tokenizer = {"kind": meta["tokenizer"]["kind"], "files": files}
    payload = {key: value for key, value in meta.items() if key not in ("layout", "weights")}
    payload.update(model=model, tokenizer=tokenizer)
    return Payload.from_dict(payload, folder)


def file_state(folder: str) -> tuple:
    """(inode, size, mtime) of the files that identify a folder, to tell that it changed meanwhile."""
    states = []
    for name in (CONFIG, WEIGHTS):
        if not os.path.isfile(os.path.join(folder, name)):     # a partial copy or download
            raise CheckpointError(f"checkpoint {folder} lacks {name}, which a model folder holds; copy the whole "
                                  "folder (a git-lfs clone: git lfs pull)")
        stat = os.stat(os.path.join(folder, name))
        states.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(states)


# --------------------------------------------------------------------------- publishing
def push_to_hub(folder: str, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str = "Upload dimmatch model") -> str:
    """Upload a model folder to the HuggingFace Hub as model repository `repo_id` (created if
    needed); the folder is checked first, so a damaged one is never published. Returns the URL."""
    read_folder(folder)
    from huggingface_hub import HfApi   # publishing only: the network client is loaded when it is used
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
