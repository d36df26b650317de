"""Retrieval with a trained model on your own collection: encode it once, then query it.

    python tools/retrieve.py index --checkpoint model_best.pth --images photos/ --out photos.index
    python tools/retrieve.py index --checkpoint model_best.pth --regions feats.npy --out feats.index
    python tools/retrieve.py text --index photos.index --query "a dog on a beach" --query "two cyclists" --top 5
    python tools/retrieve.py image --index photos.index --captions captions.txt --item 3 --top 5
    python tools/retrieve.py export --index photos.index --captions captions.txt --out features.npz

The index holds the head's prepared image features (each image encoded once), their names, and the
provenance of both: the checkpoint's content hash and the collection. Queries load that checkpoint
again (offline: it carries its tokenizer), from where it was or from --checkpoint, and refuse one
whose content differs from the index's. Text queries are scored against the whole collection in
shards, as the evaluation scores a split; for ESL-CLIP the score is bilinear in per-image and
per-caption features, so a query costs one matrix product. `image` ranks the captions of a file for
an image of the index; `export` writes the prepared features (and caption features, with --captions).
"""

import argparse
import os
import sys

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoints.atomic import atomic_torch_save  # noqa: E402
from checkpoints.loading import load_model, read_checkpoint_config  # noqa: E402
from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from cli.outputs import Outputs  # noqa: E402
from config.parsers import Parser  # noqa: E402
from datasets.batching import CaptionSet, Collate  # noqa: E402
from datasets.precomp import read_captions  # noqa: E402
from devices import resolve_device  # noqa: E402
from errors import ConfigError, DataError  # noqa: E402
from evaluation.scoring import EncodedItems, encode_items, score_all  # noqa: E402
from pairs import pair_of  # noqa: E402
from provenance import check_checkpoint, checkpoint_identity, image_identity, read_record, record  # noqa: E402

FORMAT = "dimmatch-index"
VERSION = 2


def load(checkpoint: str, device):
    read = read_checkpoint_config(checkpoint, argparse.Namespace(), require_data=False)
    loaded = load_model(read)
    return loaded.model.to(device), read.cfg, loaded.caption_encoder()


def collection(cfg, args, checkpoint: str):
    pair = pair_of(cfg)
    path = getattr(args, pair.collection_option)
    if not path:
        raise ConfigError(f"{checkpoint} is a {pair.name} model ({pair.summary}): index its collection with "
                          f"--{pair.collection_option}")
    return pair.collection(cfg, path)


def encode(model, dataset, side, device, batch_size, pad_id) -> EncodedItems:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collate(pad_id))
    return encode_items(model, loader, side, device, progress=False)


def read_index(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"index {path} does not exist")
    try:
        index = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise DataError(f"{path} is not a readable index ({str(exc).splitlines()[0] if str(exc) else exc})") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path} is not an index written by tools/retrieve.py index")
    if index.get("version") != VERSION:
        raise DataError(f"{path} is an index of format version {index.get('version', 1)}; this code reads version "
                        f"{VERSION}: rebuild it with tools/retrieve.py index")
    read_record(index["provenance"], path)
    return index


def index_model(index: dict, args, device):
    """The index's model, from --checkpoint or where the index was built, checked to be the same."""
    saved = index["provenance"]["checkpoints"][0]
    path = args.checkpoint or saved["file"]
    check_checkpoint(saved, path, f"index {args.index}")
    return load(path, device)


def items_of(index: dict) -> EncodedItems:
    return EncodedItems([index["features"]], None if index["lengths"] is None else [index["lengths"]])


def encode_captions(model, encoder, captions, device, batch_size) -> EncodedItems:
    return encode(model, CaptionSet(captions, encoder), "captions", device, batch_size, encoder.pad_id)


def command_index(args, device) -> dict:
    outputs = Outputs(args.overwrite)
    outputs.file(args.out, "--out", ".index")
    outputs.reads(args.checkpoint, "--checkpoint")
    outputs.reads(args.regions, "--regions")
    outputs.check()
    model, cfg, encoder = load(args.checkpoint, device)
    dataset, names = collection(cfg, args, args.checkpoint)
    items = encode(model, dataset, "images", device, args.batch_size, encoder.pad_id)
    provenance = record("index", [checkpoint_identity(args.checkpoint)],
                        {"images": len(names), "images_id": image_identity(dataset)}, dtype=str(items.flat.dtype))
    index = {"format": FORMAT, "version": VERSION, "provenance": provenance, "names": names,
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
    model, _, encoder = index_model(index, args, device)
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
    captions = read_caption_file(args.captions)
    model, _, encoder = index_model(index, args, device)
    caption_items = encode_captions(model, encoder, captions, device, args.batch_size)
    block, lengths = items_of(index).block(args.item, args.item + 1, torch.device("cpu"))
    one = EncodedItems.from_padded(block, lengths)
    scores = score_all(model.head, one, caption_items, device, progress=False)
    best = top_k(scores.T, args.top)[0]
    print(f"{index['names'][args.item]}:")
    for rank, (row, score) in enumerate(best, start=1):
        print(f"  {rank}. {captions[row]!r}  {score:.4f}")
    return best


def read_caption_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"--captions {path} is not a file (one caption a line)")
    return read_captions(path)


def command_export(args, device) -> None:
    outputs = Outputs(args.overwrite)
    outputs.file(args.out, "--out", ".npz")
    outputs.reads(args.index, "--index")
    outputs.reads(args.captions, "--captions")
    outputs.check()
    index = read_index(args.index)
    arrays = {"image_features": index["features"].numpy(), "image_names": np.array(index["names"]),
              "provenance": np.array(repr(index["provenance"]))}
    if index["lengths"] is not None:
        arrays["image_lengths"] = index["lengths"].numpy()
    if args.captions:
        captions = read_caption_file(args.captions)
        model, _, encoder = index_model(index, args, device)
        items = encode_captions(model, encoder, captions, device, args.batch_size)
        arrays["caption_features"] = items.flat.numpy()
        if items.lengths is not None:
            arrays["caption_lengths"] = items.lengths.numpy()
    tmp = f"{args.out}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, args.out)
    print(f"features -> {args.out} ({', '.join(arrays)})")


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    index = sub.add_parser("index", help="encode a collection once")
    index.add_argument("--checkpoint", required=True)
    index.add_argument("--images", help="folder of images (models on raw images, e.g. ESL-CLIP)")
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
    for command in (text, image, export):
        command.add_argument("--checkpoint", default=None,
                             help="the index's checkpoint, if it has moved (its content must be the same)")
    for command in (index, text, image, export):
        command.add_argument("--top", type=int, default=5)
        command.add_argument("--batch_size", type=int, default=128)
        command.add_argument("--device", default="auto")
    for command in (index, export):
        command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        raise ConfigError(f"--top and --batch_size must be at least 1 (got {args.top} and {args.batch_size})")
    setup_logging()
    device = resolve_device(args.device)
    commands = {"index": command_index, "text": command_text, "image": command_image, "export": command_export}
    return commands[args.command](args, device)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
