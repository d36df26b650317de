"""Datasets of a config: training pairs and evaluation image/caption sets for a split."""

from errors import DataError
from .karpathy import (ImageFileSet, KarpathyTrainDataset, check_images_exist, evaluation_entries,
                       load_karpathy_split)
from .precomp import CAPTIONS_PER_IMAGE, PrecompImageSet, PrecompSplit, PrecompTrainDataset

def build_train_dataset(cfg, caption_encoder):
    if cfg.encoders == "region_bert":
        split = PrecompSplit(cfg.data_path, cfg.data_name, "train", cfg.img_dim)
        return PrecompTrainDataset(split, caption_encoder, cfg.seed, cfg.region_drop)
    entries = load_karpathy_split(cfg.dataset, cfg.ann_path, cfg.image_root, "train")
    return KarpathyTrainDataset(entries, caption_encoder, cfg.image_size, cfg.truncated_images)


def load_eval_split(cfg, split: str, max_images: int | None = None, folds: int = 1):
    """(image set, captions) of a split, each image once with its 5 captions consecutive, every
    file checked; `folds` > 1 requires the images to split into that many equal folds."""
    if cfg.encoders == "region_bert":
        data = PrecompSplit(cfg.data_path, cfg.data_name, split, cfg.img_dim)
        if len(data.captions) % CAPTIONS_PER_IMAGE:
            raise DataError(f"{data.caps_file} has {len(data.captions)} captions, not a multiple of "
                            f"{CAPTIONS_PER_IMAGE}: evaluation needs 5 consecutive captions per image")
        if max_images is not None and data.num_images > max_images:
            data.captions = data.captions[: max_images * CAPTIONS_PER_IMAGE]
        image_set, captions, where = PrecompImageSet(data), data.captions, data.caps_file
    else:
        entries = load_karpathy_split(cfg.dataset, cfg.ann_path, cfg.image_root, split)
        entries = evaluation_entries(entries, f"{cfg.dataset} split '{split}'", max_images)
        paths = [path for path, _ in entries]
        check_images_exist(paths)
        captions = [caption for _, captions in entries for caption in captions]
        image_set, where = ImageFileSet(paths, cfg.image_size, cfg.truncated_images), f"{cfg.dataset} split '{split}'"
    if len(image_set) == 0:
        raise DataError(f"{where} has no images to evaluate")
    if len(image_set) % folds:
        raise DataError(f"{where} has {len(image_set)} images, which do not split into {folds} equal folds "
                        f"(COCO testall has 5,000); use test.py for a single split")
    return image_set, captions
