"""Precomputed BUTD regions: `<data_path>/<data_name>/{split}_ims.npy` + `{split}_caps.txt`."""

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from errors import DataError
from provenance import file_fingerprint, is_npy, text_sha256

CAPTIONS_PER_IMAGE = 5


def read_text(path: str, what: str = "a text file") -> str:
    """A UTF-8 text file (a leading byte-order mark is dropped); other encodings are an error
    naming the line, since decoding them as something else would change the captions. A binary
    file (a NumPy array, anything holding a NUL byte) is an error saying it is not `what`."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} is a NumPy array file (.npy), not {what}")
    for bom, encoding in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
                          (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            raise DataError(f"{path} is {encoding.upper()} text; convert the file to UTF-8, e.g. iconv -f {encoding} "
                            "-t utf-8")
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}:{line} holds a NUL byte: it is a binary file (or UTF-16 text without its byte-order "
                        f"mark), not {what}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line} is not UTF-8 text (byte 0x{data[exc.start]:02x}); convert the file to "
                        "UTF-8, e.g. iconv -f latin1 -t utf-8") from exc


def read_captions(path: str) -> list[str]:
    """One caption a line; an empty or whitespace-only line is an error (it would shift pairs)."""
    text = read_text(path, "a text file of captions (one caption a line)")
    lines = text.split("\n")  # not splitlines(): it also splits at \x0b, \x1c, \u2028, ...
    if lines and lines[-1] == "":
        lines.pop()
    captions = [line.strip() for line in lines]
    for number, caption in enumerate(captions, start=1):
        if not caption:
            raise DataError(f"{path}:{number} is an empty caption line; every line must hold one caption")
    return captions


def read_ids(path: str) -> np.ndarray:
    """One integer COCO id a line (SCAN's <split>_ids.txt, or a file given with --ids_file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return np.array([int(line) for line in handle if line.strip()], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path} must hold one integer COCO id per line ({exc})") from exc


def load_region_features(path: str, img_dim: int) -> np.ndarray:
    """A checked, memory-mapped (images x regions x img_dim) float feature file."""
    if not is_npy(path):
        raise DataError(f"{path} is not a .npy file (it lacks NumPy's header); expected (images, regions, "
                        f"{img_dim}) float features")
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise DataError(
                f"{path} holds Python objects, not a float array (images x regions x {img_dim})") from exc
        raise DataError(f"{path} is not a readable .npy file: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npy file (truncated download?): {exc}") from exc
    if images.dtype.kind != "f":
        raise DataError(f"{path} has dtype {images.dtype}; expected float region features")
    if images.ndim != 3:
        raise DataError(f"{path} has shape {images.shape}; expected (images, regions, {img_dim})")
    if images.shape[2] != img_dim:
        raise DataError(f"{path} has {images.shape[2]}-d region features, but the model takes {img_dim}-d ones "
                        "(--img_dim; a checkpoint sets its own)")
    return images


def region_row(features: np.ndarray, path: str, row: int) -> torch.Tensor:
    """One image's regions as float32; NaN or infinite values are an error naming the row."""
    regions = np.array(features[row], dtype=np.float32)
    if not np.isfinite(regions).all():
        raise DataError(f"{path} row {row} has NaN or infinite values")
    return torch.from_numpy(regions)


class PrecompSplit:
    """One split, validated at load. Features are memory-mapped (COCO train is ~33 GB).

    `image_divisor` is 5 when the .npy has one row per image and 1 when it has one row per
    caption (then image i of the evaluation protocol is row 5i, as in the released code).
    """

    def __init__(self, data_path: str, data_name: str, split: str, img_dim: int,
                 max_captions: int | None = None):
        folder = os.path.join(data_path, data_name)
        if os.path.isfile(data_path):
            raise DataError(f"--data_path {data_path} is a file; give the folder that holds {data_name}/")
        if not os.path.isdir(data_path):
            raise DataError(f"data folder {data_path} does not exist (--data_path)")
        if not os.path.isdir(folder):
            raise DataError(f"{folder} does not exist: --data_path must hold the {data_name}/ folder")
        self.ims_file = os.path.join(folder, f"{split}_ims.npy")
        self.caps_file = os.path.join(folder, f"{split}_caps.txt")
        for path in (self.caps_file, self.ims_file):
            if os.path.isdir(path):
                raise DataError(f"{path} is a folder; split '{split}' needs the files {split}_ims.npy and "
                                f"{split}_caps.txt")
            if not os.path.isfile(path):
                raise DataError(f"{path} is missing (split '{split}' needs {split}_ims.npy and {split}_caps.txt)")
        self.captions = read_captions(self.caps_file)
        self._images = load_region_features(self.ims_file, img_dim)
        n_rows, n_captions = self._images.shape[0], len(self.captions)
        if n_captions == CAPTIONS_PER_IMAGE * n_rows:
            self.image_divisor = CAPTIONS_PER_IMAGE
        elif n_captions == n_rows:
            self.image_divisor = 1
        else:
            raise DataError(
                f"{self.caps_file} has {n_captions} captions for the {n_rows} rows of {self.ims_file}; "
                f"expected {CAPTIONS_PER_IMAGE} per row ({CAPTIONS_PER_IMAGE * n_rows}) or one per row ({n_rows})")
        if max_captions is not None and n_captions > max_captions:
            self.captions = self.captions[:max_captions]

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # reopened in a spawned data-loader worker
            self._images = np.load(self.ims_file, mmap_mode="r", allow_pickle=False)
        return self._images

    def __getstate__(self) -> dict:
        # never pickle the memory map: that would copy the whole feature file into each worker
        return {**self.__dict__, "_images": None}

    @property
    def num_images(self) -> int:
        """Images of the evaluation protocol (5 consecutive captions each)."""
        return len(self.captions) // CAPTIONS_PER_IMAGE

    def image_row(self, caption_index: int) -> int:
        return caption_index // self.image_divisor

    def features(self, row: int) -> torch.Tensor:
        return region_row(self.images, self.ims_file, row)


class PrecompTrainDataset(Dataset):
    """(regions, caption ids) pairs with the released training augmentation.

    Randomness comes from a generator seeded by (seed, epoch, index), so a sample is the same
    whatever the worker count, and a resumed run draws what the uninterrupted one drew."""

    def __init__(self, split: PrecompSplit, caption_encoder, seed: int, region_drop: float):
        self.split = split
        self.caption_encoder = caption_encoder
        self.seed = seed
        self.region_drop = region_drop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def identity(self) -> dict:
        """What the training pairs are (a resumed run must train on the same): captions and features."""
        return {"pairs": len(self), "captions_sha256": text_sha256(self.split.captions),
                "features": file_fingerprint(self.split.ims_file), "divisor": self.split.image_divisor}

    def __len__(self) -> int:
        return len(self.split.captions)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        regions = self.split.features(self.split.image_row(index))
        if self.region_drop > 0:
            keep = rng.random(regions.shape[0]) > self.region_drop
            regions = regions[torch.from_numpy(keep)]
        ids = self.caption_encoder(self.split.captions[index], rng)
        return {"image": regions, "ids": ids, "index": index}


class PrecompImageSet(Dataset):
    """Each image of the protocol once."""

    def __init__(self, split: PrecompSplit):
        self.split = split

    def __len__(self) -> int:
        return self.split.num_images

    def __getitem__(self, index: int) -> dict:
        return {"image": self.split.features(self.split.image_row(index * CAPTIONS_PER_IMAGE)), "index": index}

    def identity(self) -> dict:
        """What the images are, for provenance records: the feature file's content and the rows read."""
        return {"kind": "regions", "file": os.path.basename(self.split.ims_file), "images": len(self),
                "divisor": self.split.image_divisor, "fingerprint": file_fingerprint(self.split.ims_file)}


class RegionFileSet(Dataset):
    """Each row of an (images x regions x dim) feature file (a collection to index)."""

    def __init__(self, path: str, img_dim: int):
        if not os.path.exists(path):
            raise DataError(f"{path} does not exist")
        if not os.path.isfile(path):
            raise DataError(f"{path} is not a region feature file (.npy)")
        self.features = load_region_features(path, img_dim)
        self.path = path

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": region_row(self.features, self.path, index), "index": index}

    def identity(self) -> dict:
        return {"kind": "regions", "file": os.path.basename(self.path), "images": len(self), "divisor": 1,
                "fingerprint": file_fingerprint(self.path)}
