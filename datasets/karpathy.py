"""Raw images with Karpathy-split captions (ESL-CLIP).

Flickr30K: `dataset_flickr30k.json` (`images[]` with `filename`, `split` in train/val/test,
`sentences[].raw`); captions are `raw.strip('.').lower()`.
COCO: `{train,dev,testall}_coco.json` (`images[]` with `file_name`, `sentences[].raw`), files
under `train2014/` or `val2014/`; captions are `raw.lower()`.
"""

import json
import logging
import os
import re

from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import Dataset

from errors import DataError
from provenance import text_sha256
from .precomp import CAPTIONS_PER_IMAGE, read_text

logger = logging.getLogger("dimmatch")

ANNOTATION_FILES = {"f30k": "dataset_flickr30k.json", "coco": "{split}_coco.json"}
COCO_SPLITS = ("train", "dev", "testall")


def annotation_file(dataset: str, ann_path: str, split: str) -> str:
    """The annotation file of `split`. Flickr30K has one file whose images carry their split;
    COCO has one file per split, so a single COCO file must be the one of the split asked for."""
    if dataset == "coco" and split not in COCO_SPLITS:
        raise DataError(f"COCO's annotation files are {{{','.join(COCO_SPLITS)}}}_coco.json: there is no split "
                        f"'{split}'; evaluate COCO with testall.py (5K and 5-fold 1K) or --split dev")
    expected = ANNOTATION_FILES[dataset].format(split=split)
    if os.path.isfile(ann_path):
        name = os.path.basename(ann_path)
        if dataset == "coco" and name != expected:
            other = re.fullmatch(r"(.+)_coco\.json", name)
            holds = f"split '{other.group(1)}'" if other else "an unknown split"
            raise DataError(f"--ann_path {ann_path} is the COCO annotation file of {holds}, but split '{split}' "
                            f"needs {expected}; give the folder holding {{train,dev,testall}}_coco.json")
        return ann_path
    if not os.path.isdir(ann_path):
        raise DataError(f"annotation path {ann_path} does not exist (--ann_path)")
    path = os.path.join(ann_path, expected)
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder, not the {dataset} annotation file")
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing (--ann_path must be the {dataset} annotation file or its folder)")
    return path


def _load_json(path: str) -> dict:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} has no 'images' list (expected a Karpathy-format annotation file)")
    return data


def _image_path(dataset: str, image_root: str, name: str, split: str) -> str:
    if dataset == "f30k":
        return os.path.join(image_root, name)
    if "/" in name:
        return os.path.join(image_root, name)
    folder = "train2014" if ("train2014" in name or (split == "train" and "val2014" not in name)) else "val2014"
    return os.path.join(image_root, folder, name)


def load_karpathy_split(dataset: str, ann_path: str, image_root: str, split: str) -> list[tuple[str, list[str]]]:
    """[(image path, [normalised captions])] of one split, in file order."""
    if os.path.isfile(image_root):
        raise DataError(f"--image_root {image_root} is a file; give the folder of the images")
    if not os.path.isdir(image_root):
        raise DataError(f"--image_root {image_root} does not exist")
    path = annotation_file(dataset, ann_path, split)
    data = _load_json(path)
    name_key = "filename" if dataset == "f30k" else "file_name"
    entries = []
    splits_seen = set()
    for position, image in enumerate(data["images"]):
        required = (name_key, "sentences", "split") if dataset == "f30k" else (name_key, "sentences")
        for key in required:
            if key not in image:
                raise DataError(f"{path}: images[{position}] has no '{key}'")
        if dataset == "f30k":
            splits_seen.add(image["split"])
            if image["split"] != split:
                continue
        captions = []
        for number, sentence in enumerate(image["sentences"]):
            if not isinstance(sentence, dict) or not isinstance(sentence.get("raw"), str):
                raise DataError(f"{path}: images[{position}].sentences[{number}] has no 'raw' caption")
            raw = sentence["raw"]
            caption = raw.strip(".").lower() if dataset == "f30k" else raw.lower()
            if not caption.strip():
                raise DataError(f"{path}: images[{position}].sentences[{number}] is an empty caption")
            captions.append(caption)
        entries.append((_image_path(dataset, image_root, image[name_key], split), captions))
    if not entries:
        present = f" (splits present: {', '.join(sorted(splits_seen))})" if splits_seen else ""
        raise DataError(f"{path} has no images in split '{split}'{present}")
    return entries


def caption_ids(dataset: str, ann_path: str, split: str) -> list[int] | None:
    """The COCO caption ids of a split's evaluated captions (each image's first 5, in file order),
    from `sentences[].id`; None when the file does not carry them."""
    path = annotation_file(dataset, ann_path, split)
    ids = []
    for image in _load_json(path)["images"]:
        if dataset == "f30k" and image.get("split") != split:
            continue
        for sentence in image["sentences"][:CAPTIONS_PER_IMAGE]:
            if not isinstance(sentence.get("id"), int):
                return None
            ids.append(sentence["id"])
    return ids


def evaluation_entries(entries, path_hint: str, max_images: int | None = None):
    """Images with exactly their first 5 captions, as the protocol scores them."""
    entries = entries[:max_images] if max_images else entries
    short = [p for p, captions in entries if len(captions) < CAPTIONS_PER_IMAGE]
    if short:
        raise DataError(f"{path_hint}: {len(short)} images have fewer than {CAPTIONS_PER_IMAGE} captions "
                        f"(first: {short[0]}); the evaluation protocol needs 5 per image")
    extra = sum(len(captions) > CAPTIONS_PER_IMAGE for _, captions in entries)
    if extra:
        logger.warning("%s: %d images have more than %d captions; evaluating their first %d",
                       path_hint, extra, CAPTIONS_PER_IMAGE, CAPTIONS_PER_IMAGE)
    return [(p, captions[:CAPTIONS_PER_IMAGE]) for p, captions in entries]




def _decode(path: str, load_truncated: bool):
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = load_truncated
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_image(path: str, truncated: str = "refuse"):
    """The decoded image, or the reason it cannot be used. A truncated file is unreadable, or with
    `truncated='load'` decoded as far as it goes (the rest grey), as the released COCO loader does
    (PIL's LOAD_TRUNCATED_IMAGES), with one warning per file."""
    try:
        try:
            return _decode(path, load_truncated=False), None
        except OSError as exc:
            if truncated != "load" or "truncated" not in str(exc).lower():
                raise
        image = _decode(path, load_truncated=True)
        if path not in _TRUNCATED_NOTED:
            _TRUNCATED_NOTED.add(path)
            logger.warning("image %s is truncated; decoded as far as it goes, as the released COCO loader does "
                           "(--truncated_images refuse treats it as unreadable)", path)
        return image, None
    except FileNotFoundError:
        return None, "is missing"
    except IsADirectoryError:
        return None, "is a folder, not an image"
    except Image.DecompressionBombError as exc:
        return None, f"is too large to decode safely ({exc})"
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return None, f"cannot be read ({exc})"


_TRUNCATED_NOTED = set()


class KarpathyTrainDataset(Dataset):
    """(image, caption) pairs. An unreadable image is skipped: the pair is replaced by the next
    readable one (so batches keep their size, which DDP's gathers need), warned about once and
    counted in the item's `skipped`."""

    MAX_SKIPPED = 100

    def __init__(self, entries, caption_encoder, transform, truncated: str = "refuse"):
        self.pairs = [(path, caption) for path, captions in entries for caption in captions]
        self.caption_encoder = caption_encoder
        self.transform = transform
        self.truncated = truncated
        self.epoch = 0
        self.warned = set()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def identity(self) -> dict:
        """What the training pairs are (a resumed run must train on the same): image names and captions."""
        return {"pairs": len(self), "pairs_sha256": text_sha256(f"{os.path.basename(path)}\t{caption}"
                                                                for path, caption in self.pairs)}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        for skipped in range(min(self.MAX_SKIPPED, len(self.pairs))):
            path, caption = self.pairs[(index + skipped) % len(self.pairs)]
            image, problem = read_image(path, self.truncated)
            if image is not None:
                return {"image": self.transform(image), "ids": self.caption_encoder(caption),
                        "index": index, "skipped": skipped}
            if path not in self.warned:
                self.warned.add(path)
                logger.warning("skipping training image %s: it %s", path, problem)
        raise DataError(f"no readable image among {self.MAX_SKIPPED} training pairs from #{index} "
                        f"(last: {path} {problem}); check --image_root")


class ImageFileSet(Dataset):
    """Each evaluation image once; an unreadable image is an error (it would change the metrics).
    `transform` is the encoder pair's preprocessing (PIL image -> tensor); `what` names the images
    in that error (an index build says it is indexing)."""

    def __init__(self, paths: list[str], transform, truncated: str = "refuse", what: str = "evaluation image"):
        self.paths, self.what = paths, what
        self.transform = transform
        self.truncated = truncated

    def __len__(self) -> int:
        return len(self.paths)

    def identity(self) -> dict:
        """What the images are, for provenance records: their file names, in order."""
        return {"kind": "images", "names": [os.path.basename(path) for path in self.paths]}

    def __getitem__(self, index: int) -> dict:
        image, problem = read_image(self.paths[index], self.truncated)
        if image is None:
            raise DataError(f"{self.what} {self.paths[index]} {problem}")
        return {"image": self.transform(image), "index": index}


def check_images_exist(paths: list[str]) -> None:
    """Fail before encoding anything when evaluation images are missing."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        count = "1 evaluation image is" if len(missing) == 1 else f"{len(missing)} evaluation images are"
        raise DataError(f"{count} missing, e.g. {missing[0]} (--image_root)")
