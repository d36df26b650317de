"""Data layouts, registered by name for `--layout`: how a dataset lies on disk, apart from the
encoders that read it. A layout delivers either region features (REGIONS: rows of a feature file,
ready tensors) or image files (IMAGES: decoded by PIL, preprocessed by the encoder pair's
transform); an encoder pair reads every layout that delivers what it reads (pairs.base).

Each evaluation split is a list of images, each owning `captions_per_image` consecutive captions
(Flickr30K and COCO: 5); the metrics take that count from the split (`EvalSplit`)."""

import os
from dataclasses import dataclass
from typing import Callable

from config import catalogue
from config.catalogue import Declared
from config.catalogue import COCO as COCO_DECLARED, KARPATHY as KARPATHY_DECLARED, PRECOMP as PRECOMP_DECLARED
from errors import ConfigError, DataError
from .karpathy import (ImageFileSet, KarpathyTrainDataset, annotation_file, caption_ids as karpathy_caption_ids,
                       check_images_exist, evaluation_entries, load_karpathy_split)
from .precomp import CAPTIONS_PER_IMAGE, PrecompImageSet, PrecompSplit, PrecompTrainDataset, read_ids

REGIONS = "region features"
IMAGES = "image files"


@dataclass
class EvalSplit:
    """An evaluation split: each image once (a Dataset of {'image', 'index'}), and its captions,
    `captions_per_image` consecutive ones per image in image order; `where` names it in messages."""

    images: object
    captions: list
    captions_per_image: int
    where: str

    def __post_init__(self):
        if len(self.captions) != self.captions_per_image * len(self.images):
            raise DataError(f"{self.where}: {len(self.captions)} captions for {len(self.images)} images; the layout "
                            f"gives each image {self.captions_per_image}")


@dataclass(frozen=True)
class DataLayout:
    """A registered layout (`--layout NAME`).

    `options` are its data options (config.catalogue), of which `required` must be set to read it;
    `resolve(values, given)` checks them and sets the run defaults that follow from the data (the
    validation split and protocol); `train_dataset(cfg, caption_encoder, transform)` is a Dataset of
    training pairs with `set_epoch` and `identity`; `eval_split(cfg, split, max_images, transform)`
    an EvalSplit; `transform` is the pair's image preprocessing, None for REGIONS."""

    name: str
    summary: str
    images: str                        # REGIONS or IMAGES
    options: tuple
    required: tuple
    captions_per_image: int
    resolve: Callable                  # (values, given: set) -> None
    train_dataset: Callable            # (cfg, caption_encoder, transform) -> Dataset
    eval_split: Callable               # (cfg, split, max_images, transform) -> EvalSplit
    input_files: Callable              # (cfg, split) -> the files a split is read from (never an output)
    coco: Callable = lambda cfg: False  # (cfg) -> whether the data is MS-COCO (--extended, testall.py 5 folds)
    caption_ids: Callable | None = None  # (cfg, split) -> (COCO caption ids, source) for --extended
    data_hint: str = ""                # how to give the data, for messages [its required options]

    @property
    def option_names(self) -> tuple:
        return tuple(option.name for option in self.options)

    @property
    def hint(self) -> str:
        """How to give the data, for messages."""
        return self.data_hint or "/".join(f"--{name}" for name in self.required)


LAYOUTS: dict[str, DataLayout] = {}


def register_layout(layout: DataLayout) -> DataLayout:
    """A layout, declared for the command line (config.catalogue) unless it is already."""
    LAYOUTS[layout.name] = layout
    catalogue.LAYOUTS.setdefault(layout.name, Declared(layout.name, layout.summary, layout.options))
    return layout


def layout_named(name: str) -> DataLayout:
    layout = LAYOUTS.get(name)
    if layout is None:
        raise ConfigError(f"unknown --layout {name!r} (choose {', '.join(LAYOUTS)})")
    return layout


def require(layout: DataLayout, values: dict, what: str) -> None:
    missing = [name for name in layout.required if not values.get(name)]
    if missing:
        raise ConfigError(f"{what} needs {' and '.join('--' + name for name in missing)} ({layout.summary})")


# ----------------------------------------------------------------------------- precomputed regions

def _precomp_resolve(values: dict, given: set) -> None:
    require(PRECOMP, values, "the precomp layout")
    values["val_split"] = values["val_split"] or "dev"


def _precomp_train(cfg, caption_encoder, transform) -> PrecompTrainDataset:
    split = PrecompSplit(cfg.data_path, cfg.data_name, "train", cfg.img_dim)
    return PrecompTrainDataset(split, caption_encoder, cfg.seed, cfg.region_drop)


def _precomp_eval(cfg, split: str, max_images: int | None, transform) -> EvalSplit:
    if split == "testall" and cfg.data_name != "coco_precomp":
        raise DataError(f"testall is COCO's 5K test split; {cfg.data_name} has none: evaluate it with test.py")
    data = PrecompSplit(cfg.data_path, cfg.data_name, split, cfg.img_dim)
    if len(data.captions) % CAPTIONS_PER_IMAGE:
        raise DataError(f"{data.caps_file} has {len(data.captions)} captions, not a multiple of "
                        f"{CAPTIONS_PER_IMAGE}: evaluation needs {CAPTIONS_PER_IMAGE} consecutive captions per image")
    if data.image_divisor == 1:
        _check_rows_repeat(data)
    if max_images is not None and data.num_images > max_images:
        data.captions = data.captions[: max_images * CAPTIONS_PER_IMAGE]
    return EvalSplit(PrecompImageSet(data), data.captions, CAPTIONS_PER_IMAGE, data.caps_file)


def _check_rows_repeat(data: PrecompSplit, groups: int = 8) -> None:
    """A feature file with one row per caption repeats each image's row for its 5 captions (SCAN's
    COCO files); evaluation reads row 5i as image i. One caption per image has as many rows as
    captions too, and would be read as every fifth image with the wrong captions: refused when
    sampled groups of 5 rows are not copies."""
    count = data.num_images
    for image in sorted({0, count - 1, *range(0, count, max(1, count // groups))}):
        rows = data.images[image * CAPTIONS_PER_IMAGE:(image + 1) * CAPTIONS_PER_IMAGE]
        if not (rows == rows[:1]).all():
            raise DataError(f"{data.ims_file} has one row per caption of {data.caps_file}, but rows "
                            f"{image * CAPTIONS_PER_IMAGE}-{(image + 1) * CAPTIONS_PER_IMAGE - 1} differ: evaluation "
                            f"needs {CAPTIONS_PER_IMAGE} captions per image, in image order (one row per image, or "
                            f"each row repeated for its {CAPTIONS_PER_IMAGE} captions)")


def _precomp_caption_ids(cfg, split: str):
    """The ids SCAN ships next to precomputed features (<split>_ids.txt)."""
    path = os.path.join(cfg.data_path, cfg.data_name, f"{split}_ids.txt")
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing: --extended needs the COCO ids of the rows (SCAN's {split}_ids.txt, "
                        "or a file of ids given with --ids_file)")
    return read_ids(path), path


def _precomp_files(cfg, split: str) -> list[str]:
    folder = os.path.join(cfg.data_path, cfg.data_name)
    return [os.path.join(folder, f"{split}_{name}") for name in ("ims.npy", "caps.txt", "ids.txt")]


PRECOMP = DataLayout(
    name=PRECOMP_DECLARED.name, summary=PRECOMP_DECLARED.summary, images=REGIONS, options=PRECOMP_DECLARED.options,
    required=("data_path", "data_name"), captions_per_image=CAPTIONS_PER_IMAGE, resolve=_precomp_resolve,
    train_dataset=_precomp_train, eval_split=_precomp_eval, input_files=_precomp_files,
    coco=lambda cfg: cfg.data_name == "coco_precomp", caption_ids=_precomp_caption_ids)


# ----------------------------------------------------------------------------- raw images + Karpathy JSON

class RawImages:
    """The resolution and reading of one raw-image layout, whose annotation files are those of
    `dataset` (the layout, not a saved --dataset, decides: --layout coco reads COCO's files)."""

    def __init__(self, name: str, dataset: str):
        self.name, self.dataset = name, dataset

    def _checked_dataset(self, given: str | None) -> str:
        if given not in (None, self.dataset):
            raise ConfigError(f"--layout {self.name} reads --dataset {self.dataset}, not --dataset {given}")
        return self.dataset

    def _checked(self, cfg) -> str:
        return self._checked_dataset(cfg.dataset)

    def resolve(self, values: dict, given: set) -> None:
        """Flickr30K (karpathy) validates on val, its first 1,000 images; COCO (coco) on dev, in five
        folds with the last one selecting, and decodes truncated JPEGs as the released COCO loader."""
        values["dataset"] = self._checked_dataset(values["dataset"])
        layout = LAYOUTS[self.name]
        require(layout, values, f"the {layout.name} layout")
        coco = self.dataset == "coco"
        values["val_split"] = values["val_split"] or ("dev" if coco else "val")
        values["val_protocol"] = values["val_protocol"] or ("last_fold" if coco else "first_1k")
        if coco and "truncated_images" not in given:
            values["truncated_images"] = "load"   # the released COCO loader sets PIL's LOAD_TRUNCATED_IMAGES

    def train_dataset(self, cfg, caption_encoder, transform) -> KarpathyTrainDataset:
        entries = load_karpathy_split(self._checked(cfg), cfg.ann_path, cfg.image_root, "train")
        return KarpathyTrainDataset(entries, caption_encoder, transform, cfg.truncated_images)

    def eval_split(self, cfg, split: str, max_images: int | None, transform) -> EvalSplit:
        dataset = self._checked(cfg)
        where = f"{dataset} split '{split}'"
        entries = evaluation_entries(load_karpathy_split(dataset, cfg.ann_path, cfg.image_root, split), where,
                                     max_images)
        paths = [path for path, _ in entries]
        check_images_exist(paths)
        captions = [caption for _, captions in entries for caption in captions]
        return EvalSplit(ImageFileSet(paths, transform, cfg.truncated_images), captions, CAPTIONS_PER_IMAGE, where)

    def caption_ids(self, cfg, split: str):
        dataset = self._checked(cfg)
        found = karpathy_caption_ids(dataset, cfg.ann_path, split)
        source = annotation_file(dataset, cfg.ann_path, split)
        if found is None:
            raise ConfigError(f"{source} gives its captions no COCO ids (sentences[].id), so --extended cannot "
                              "identify them; give --ids_file with the caption ids in the file's order")
        return found, source

    def input_files(self, cfg, split: str) -> list[str]:
        return [annotation_file(self._checked(cfg), cfg.ann_path, split)]


def _raw_layout(declared, dataset: str) -> DataLayout:
    reading = RawImages(declared.name, dataset)
    return DataLayout(
        name=declared.name, summary=declared.summary, images=IMAGES, options=declared.options,
        required=("image_root", "ann_path"), captions_per_image=CAPTIONS_PER_IMAGE,
        resolve=reading.resolve, train_dataset=reading.train_dataset,
        eval_split=reading.eval_split, input_files=reading.input_files, coco=lambda cfg: dataset == "coco",
        caption_ids=reading.caption_ids, data_hint="--dataset/--image_root/--ann_path")


KARPATHY = _raw_layout(KARPATHY_DECLARED, "f30k")
COCO = _raw_layout(COCO_DECLARED, "coco")

for _declared in list(catalogue.LAYOUTS.values()):
    register_layout(catalogue.load_code(_declared))
