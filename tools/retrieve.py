"""Retrieval with a trained model on your own collection: encode it once, then query it.

    python tools/retrieve.py index --checkpoint model_best.pth --images photos/ --out photos.index
    python tools/retrieve.py index --checkpoint model_best.pth --regions feats.npy --out feats.index
    python tools/retrieve.py text --index photos.index --query "a dog on a beach" --query "two cyclists" --top 5
    python tools/retrieve.py image --index photos.index --captions captions.txt --item 3 --top 5
    python tools/retrieve.py export --index photos.index --captions captions.txt --out features.npz

The index holds the head's prepared image features (each image encoded once), their names and the
checkpoint they came from; queries load that checkpoint again (offline: it carries its tokenizer).
Text queries are scored against the whole collection in shards, as the evaluation scores a split;
for ESL-CLIP the score is bilinear in per-image and per-caption features, so a query costs one
matrix product. `image` ranks the captions of a file for an image of the index; `export` writes the
prepared image features (and caption features, with --captions) for use elsewhere.
"""

import argparse
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoints.atomic import atomic_torch_save  # noqa: E402
from checkpoints.loading import load_for_evaluation  # noqa: E402
from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from cli.outputs import check_output_file  # noqa: E402
from datasets.batching import CaptionSet, Collate  # noqa: E402
from datasets.karpathy import ImageFileSet  # noqa: E402
from datasets.precomp import load_region_features, read_captions, region_row  # noqa: E402
from devices import resolve_device  # noqa: E402
from errors import ConfigError, DataError  # noqa: E402
from evaluation.scoring import EncodedItems, encode_items, score_all  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FORMAT = "dimmatch-index"


class RegionRows(Dataset):
    """Each row of an (images x regions x dim) feature file."""

    def __init__(self, path: str, img_dim: int):
        if not os.path.isfile(path):
            raise DataError(f"{path} is not a region feature file (.npy)")
        self.features = load_region_features(path, img_dim)
        self.path = path

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": region_row(self.features, self.path, index), "index": index}


def load_model(checkpoint: str, device):
    loaded = load_for_evaluation(checkpoint, argparse.Namespace(), require_data=False)
    return loaded.model.to(device), loaded.cfg, loaded.caption_encoder()


def collection(cfg, args):
    if cfg.encoders == "clip":
        if not args.images:
            raise ConfigError(f"{args.checkpoint} is an ESL-CLIP model: index a folder of images with --images")
        if not os.path.isdir(args.images):
            raise DataError(f"--images {args.images} is not a folder")
        names = sorted(name for name in os.listdir(args.images) if name.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise DataError(f"--images {args.images} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return ImageFileSet([os.path.join(args.images, name) for name in names], cfg.image_size), names
    if not args.regions:
        raise ConfigError(f"{args.checkpoint} is a region model: index a BUTD feature file with --regions")
    rows = RegionRows(args.regions, cfg.img_dim)
    return rows, [f"{os.path.basename(args.regions)}[{row}]" for row in range(len(rows))]


def encode(model, dataset, side, device, batch_size, pad_id) -> EncodedItems:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate(pad_id))
    return encode_items(model, loader, side, device, progress=False)


def read_index(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"index {path} does not exist")
    index = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} is not an index written by tools/retrieve.py index")
    return index


def items_of(index: dict) -> EncodedItems:
    return EncodedItems([index["features"]], None if index["lengths"] is None else [index["lengths"]])


def encode_captions(model, encoder, captions, device, batch_size) -> EncodedItems:
    return encode(model, CaptionSet(captions, encoder), "captions", device, batch_size, encoder.pad_id)


def command_index(args, device) -> dict:
    check_output_file(args.out, "--out", ".index")
    model, cfg, encoder = load_model(args.checkpoint, device)
    dataset, names = collection(cfg, args)
    items = encode(model, dataset, "images", device, args.batch_size, encoder.pad_id)
    index = {"format": FORMAT, "checkpoint": os.path.abspath(args.checkpoint), "names": names,
             "features": items.flat, "lengths": items.lengths}
    atomic_torch_save(index, args.out)
    print(f"indexed {len(names)} images -> {args.out}")
    return index


def top_k(scores: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per column of `scores`: the k best rows with their scores, best first."""
    k = min(k, scores.shape[0])
    order = np.argsort(-scores, axis=0, kind="stable")[:k]
    return [[(int(row), float(scores[row, column])) for row in order[:, column]] for column in range(scores.shape[1])]


def command_text(args, device) -> list:
    index = read_index(args.index)
    model, _, encoder = load_model(index["checkpoint"], device)
    queries = encode_captions(model, encoder, args.query, device, args.batch_size)
    scores = score_all(model.head, items_of(index), queries, device, progress=False)
    results = top_k(scores, args.top)
    for query, best in zip(args.query, results):
        print(f"{query!r}:")
        for rank, (row, score) in enumerate(best, start=1):
            print(f"  {rank}. {index['names'][row]}  {score:.4f}")
    return results


def command_image(args, device) -> list:
    index = read_index(args.index)
    if not 0 <= args.item < len(index["names"]):
        raise ConfigError(f"--item {args.item}: the index has items 0..{len(index['names']) - 1}")
    model, _, encoder = load_model(index["checkpoint"], device)
    captions = read_captions(args.captions)
    caption_items = encode_captions(model, encoder, captions, device, args.batch_size)
    block, lengths = items_of(index).block(args.item, args.item + 1, torch.device("cpu"))
    one = EncodedItems.from_padded(block, lengths)
    scores = score_all(model.head, one, caption_items, device, progress=False)
    best = top_k(scores.T, args.top)[0]
    print(f"{index['names'][args.item]}:")
    for rank, (row, score) in enumerate(best, start=1):
        print(f"  {rank}. {captions[row]!r}  {score:.4f}")
    return best


def command_export(args, device) -> None:
    check_output_file(args.out, "--out", ".npz")
    index = read_index(args.index)
    arrays = {"image_features": index["features"].numpy(), "image_names": np.array(index["names"])}
    if index["lengths"] is not None:
        arrays["image_lengths"] = index["lengths"].numpy()
    if args.captions:
        model, _, encoder = load_model(index["checkpoint"], device)
        captions = read_captions(args.captions)
        items = encode_captions(model, encoder, captions, device, args.batch_size)
        arrays["caption_features"] = items.flat.numpy()
        if items.lengths is not None:
            arrays["caption_lengths"] = items.lengths.numpy()
    np.savez(args.out, **arrays)
    print(f"features -> {args.out} ({', '.join(arrays)})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    index = sub.add_parser("index", help="encode a collection once")
    index.add_argument("--checkpoint", required=True)
    index.add_argument("--images", help="folder of images (ESL-CLIP models)")
    index.add_argument("--regions", help="BUTD feature file, images x regions x dim (region models)")
    index.add_argument("--out", required=True, help="the index file to write (.index)")
    text = sub.add_parser("text", help="top-k images of the index for text queries")
    text.add_argument("--index", required=True)
    text.add_argument("--query", action="append", required=True, help="a caption; repeat for several")
    image = sub.add_parser("image", help="top-k captions of a file for an image of the index")
    image.add_argument("--index", required=True)
    image.add_argument("--captions", required=True, help="one caption a line")
    image.add_argument("--item", type=int, required=True, help="position of the image in the index")
    export = sub.add_parser("export", help="write the encoded features (.npz)")
    export.add_argument("--index", required=True)
    export.add_argument("--captions", help="also encode these captions")
    export.add_argument("--out", required=True)
    for command in (index, text, image, export):
        command.add_argument("--top", type=int, default=5)
        command.add_argument("--batch_size", type=int, default=128)
        command.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        raise ConfigError("--top and --batch_size must be at least 1")
    setup_logging()
    device = resolve_device(args.device)
    commands = {"index": command_index, "text": command_text, "image": command_image, "export": command_export}
    return commands[args.command](args, device)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
