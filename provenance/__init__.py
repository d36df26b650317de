"""Where an artifact came from: the content of the checkpoint, the split and its data.

Every file a program writes from a model (score matrices, rank files, indexes, reports, exports)
carries a provenance record, and every program that reads one back checks it against what it
combines it with or queries it by, refusing a mismatch in one line. Identities are contents, not
paths: a checkpoint by the SHA-256 of its file (a model folder by that of its config and weights), a
caption list by the SHA-256 of its text, images by their file names in order (raw images) or by a
fingerprint of the feature file (regions).
"""

import hashlib
import json
import os

import numpy as np

from errors import UserError

FORMAT = "dimmatch-provenance"
VERSION = 1
CHUNK = 1 << 20
SAMPLED_ABOVE = 256 << 20      # feature files larger than this are fingerprinted from 64 chunks
SAMPLES = 64
_digests: dict = {}


def file_sha256(path: str) -> str:
    """SHA-256 of a whole file, computed once per process for a given (path, size, mtime)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, "full")
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def file_fingerprint(path: str) -> str:
    """SHA-256 of a file's size and content, sampled for large files (64 evenly spaced MiB-blocks,
    first and last included): a feature file of tens of GB is identified in milliseconds, and two
    files that differ anywhere but in unsampled bytes are told apart."""
    size = os.path.getsize(path)
    if size <= SAMPLED_ABOVE:
        return file_sha256(path)
    key = (os.path.realpath(path), size, os.stat(path).st_mtime_ns, "sampled")
    if key not in _digests:
        digest = hashlib.sha256(str(size).encode())
        with open(path, "rb") as handle:
            for offset in np.linspace(0, size - CHUNK, SAMPLES).astype(np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(CHUNK))
        _digests[key] = "sampled:" + digest.hexdigest()
    return _digests[key]


def text_sha256(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def array_sha256(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str((array.dtype.str, array.shape)).encode() + array.data).hexdigest()


FOLDER_FILES = ("config.json", "model.safetensors")   # what identifies a model folder (checkpoints.hub)


def content_sha256(path: str) -> str:
    """A checkpoint's content hash: a file's SHA-256, or for a model folder the hash of its config
    (which records the hash of every other file in it) and its weights."""
    if not os.path.isdir(path):
        return file_sha256(path)
    parts = [f"{name}:{file_sha256(os.path.join(path, name))}" for name in FOLDER_FILES
             if os.path.isfile(os.path.join(path, name))]
    return "folder:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def checkpoint_identity(path: str) -> dict:
    return {"sha256": content_sha256(path), "file": os.path.abspath(path)}


def data_identity(image_set, captions: list[str], split: str) -> dict:
    """The split, its images and its captions, in order."""
    return {"split": split, "images": len(image_set), "captions": len(captions),
            "captions_sha256": text_sha256(captions), "images_id": image_identity(image_set)}


def image_identity(image_set) -> str:
    """An image set's identity; a torch Subset (a fold) is its dataset's with the indices taken
    (recognised by its attributes, so that this module needs no torch)."""
    if hasattr(image_set, "indices") and hasattr(image_set, "dataset"):
        indices = list(image_set.indices)
        return hashlib.sha256(f"{image_identity(image_set.dataset)}:{indices}".encode()).hexdigest()
    return hashlib.sha256(json.dumps(image_set.identity(), sort_keys=True).encode()).hexdigest()


def record(kind: str, checkpoints: list[dict], data: dict | None, **extra) -> dict:
    """A provenance record: what kind of artifact, from which checkpoints (weights in order, for an
    ensemble), on which data."""
    return {"format": FORMAT, "version": VERSION, "kind": kind, "checkpoints": checkpoints, "data": data, **extra}


def read_record(record_of, where: str) -> dict:
    if not isinstance(record_of, dict) or record_of.get("format") != FORMAT:
        raise UserError(f"{where} has no provenance record (written by an older version, or not by this "
                        "project); it cannot be checked against the other inputs")
    if record_of.get("version") != VERSION:
        raise UserError(f"{where} has provenance version {record_of.get('version')}; this code reads {VERSION}")
    return record_of


def differences(first: dict, second: dict) -> list[str]:
    """What differs between two data identities (split, counts, captions, images)."""
    labels = {"split": "split", "images": "number of images", "captions": "number of captions",
              "captions_sha256": "captions", "images_id": "images (the image files, or the feature file and its rows)"}
    return [label for key, label in labels.items() if first.get(key) != second.get(key)]


def check_same_data(first: dict, second: dict, first_name: str, second_name: str) -> None:
    changed = differences(first, second)
    if changed:
        splits = (f"split {second.get('split')!r} vs {first.get('split')!r}" if second.get("split") != first.get("split")
                  else f"both of split {first.get('split')!r}")
        raise UserError(f"{second_name} was computed on other data than {first_name} ({', '.join(changed)} "
                        f"differ; {splits})")


def check_checkpoint(saved: dict, path: str, where: str, option: str = "--checkpoint") -> None:
    """The checkpoint (file or model folder) at `path` is the one `saved` (a checkpoint identity)
    was made with; `option` is the one that gives its new place."""
    if not os.path.exists(path):
        raise UserError(f"{where} was made with checkpoint {saved['file']}, which is not at {path} any more; give "
                        f"its new place with {option}")
    found = content_sha256(path)
    if found != saved["sha256"]:
        if os.path.abspath(path) == saved["file"]:
            raise UserError(f"{where} was made with another checkpoint than {path}: the file has changed since "
                            f"(sha256 {saved['sha256'][:12]}, now {found[:12]}); rebuild it with this one")
        raise UserError(f"{where} was made with another checkpoint than {path} ({saved['file']}, sha256 "
                        f"{saved['sha256'][:12]}; {path} is {found[:12]})")


def is_npy(path: str) -> bool:
    """Whether a file starts with NumPy's .npy header."""
    with open(path, "rb") as handle:
        return handle.read(6) == b"\x93NUMPY"


def read_matrix(path: str, mmap: bool = False) -> np.ndarray:
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a saved score matrix (.npy)")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    if not is_npy(path):
        raise UserError(f"{path} is not a .npy file (it lacks NumPy's header); give a matrix saved by test.py "
                        "--save_sims")
    try:
        sims = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npy score matrix ({exc})") from exc
    if sims.ndim != 2 or sims.dtype.kind != "f":
        raise UserError(f"{path} holds a {sims.dtype} array of shape {sims.shape}, not an images x captions "
                        "score matrix")
    return sims


def side_record(path: str, escape: str = "") -> tuple[str, dict]:
    """(path of, provenance record in) the .json test.py --save_sims writes next to a matrix;
    `escape` is the reader's own way around a missing record, if it has one."""
    side = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(side):
        raise UserError(f"{path} has no {side} beside it, so its split, data and checkpoint cannot be checked; "
                        f"keep the .json test.py --save_sims wrote{escape}")
    try:
        with open(side, encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"{side} is not a readable JSON record ({exc})") from exc
    return side, read_record(saved.get("provenance") if isinstance(saved, dict) else None, side)


def read_scores(path: str, checkpoint: str, data: dict) -> np.ndarray:
    """A matrix saved by test.py --save_sims, checked to be what its record says and to come from
    the checkpoint file `checkpoint` on `data` (a data identity)."""
    sims = read_matrix(path)
    if sims.shape != (data["images"], data["captions"]):
        raise UserError(f"{path} is {sims.shape[0]} x {sims.shape[1]}, but split '{data['split']}' has "
                        f"{data['images']} images and {data['captions']} captions")
    side, saved = side_record(path)
    if saved.get("matrix_sha256") != array_sha256(sims):
        raise UserError(f"{path} is not the matrix {side} describes (its content differs); was it replaced?")
    if len(saved["checkpoints"]) != 1:
        raise UserError(f"{path} holds the scores of an ensemble, not of checkpoint {checkpoint} alone")
    check_checkpoint(saved["checkpoints"][0], checkpoint, path)
    check_same_data(data, saved["data"], f"split '{data['split']}' of {checkpoint}", path)
    return sims
