"""Retrieval with a trained model on your own collection: index it once, then query it in two stages.

    python tools/retrieve.py index --checkpoint model_best.pth --images photos/ --out photos.index
    python tools/retrieve.py index --checkpoint xdim.pth --regions feats.npy --out feats.index [--shortlist cos.pth]
    python tools/retrieve.py text --index photos.index --query "a dog on a beach" --query "two cyclists" --top 5
    python tools/retrieve.py image --index photos.index --captions captions.txt --item 3 --top 5
    python tools/retrieve.py export --index photos.index --captions captions.txt --out features.npz

`index` encodes the collection once, in chunks: the head's prepared image features go to a
memory-mapped file (fp16 by default), the global vectors of the first stage to a FAISS index (the
model's own, exact for ESL-CLIP and cosine heads and pooled features for X-Dim and ESL-region, or
those of a --shortlist checkpoint). A text query is encoded, shortlisted to --rerank_k images by the
global vectors, and those images are re-ranked by the head, reading only their rows; --exhaustive
scores every image with the head instead. The index records the content hash of its checkpoints;
a query loads them from where they were (or --checkpoint / --shortlist) and refuses one whose content
differs. `image` ranks the captions of a file for an image of the index; `export` writes the
features (and caption features, with --captions) as .npz.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoints.atomic import publish  # noqa: E402
from checkpoints.loading import load_model, read_checkpoint_config  # noqa: E402
from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from cli.outputs import Outputs  # noqa: E402
from config.parsers import Parser  # noqa: E402
from datasets.batching import CaptionSet, Collate  # noqa: E402
from datasets.precomp import read_captions  # noqa: E402
from devices import resolve_device  # noqa: E402
from errors import ConfigError, DataError, Stopped  # noqa: E402
from evaluation.scoring import EncodedItems, encode_items, score_all  # noqa: E402
from pairs import pair_of  # noqa: E402
from provenance import check_checkpoint, checkpoint_identity, image_identity, record  # noqa: E402
from retrieval import collection  # noqa: E402
from retrieval.search import INDEX_KINDS  # noqa: E402


def load(checkpoint: str, device):
    read = read_checkpoint_config(checkpoint, argparse.Namespace(), require_data=False)
    loaded = load_model(read)
    return loaded.model.to(device), read.cfg, loaded.caption_encoder()


def collection_of(cfg, args, checkpoint: str):
    pair = pair_of(cfg)
    path = getattr(args, pair.collection_option, None) if pair.collection else None
    if not path:
        raise ConfigError(f"{checkpoint} is a {pair.name} model ({pair.summary}): index its collection with "
                          f"--{pair.collection_option}")
    return pair.collection(cfg, path)


def encode_captions(model, encoder, captions, device, batch_size, vectors: list | None = None) -> EncodedItems:
    loader = DataLoader(CaptionSet(captions, encoder), batch_size=batch_size, shuffle=False,
                        collate_fn=Collate(encoder.pad_id))
    return encode_items(model, loader, "captions", device, progress=False, global_vectors=vectors)


def command_index(args, device) -> dict:
    outputs = Outputs(args.overwrite)
    outputs.file(args.out, "--out", ".index", folder=True)
    for option in ("checkpoint", "shortlist", "regions", "images"):
        outputs.reads(getattr(args, option), f"--{option}")
    outputs.check()
    if args.overwrite and os.path.isdir(args.out):
        collection.check_replaceable(args.out.rstrip("/"))
    model, cfg, _ = load(args.checkpoint, device)
    if getattr(args, "detector", None) or args.images and pair_of(cfg).collection_option == "regions":
        args.regions = regions_of_images(args, cfg)
    dataset, names = collection_of(cfg, args, args.checkpoint)
    shortlist_model, checkpoints = None, [checkpoint_identity(args.checkpoint)]
    first_stage = "exact: the head's own inner product" if model.head.exact_global else "pooled encoder features"
    if args.shortlist:
        shortlist_model, shortlist_cfg, _ = load(args.shortlist, device)
        if pair_of(shortlist_cfg).collection_option != pair_of(cfg).collection_option:
            raise ConfigError(f"--shortlist {args.shortlist} reads --{pair_of(shortlist_cfg).collection_option}, "
                              f"{args.checkpoint} --{pair_of(cfg).collection_option}: they must index the same files")
        checkpoints.append(checkpoint_identity(args.shortlist))
        first_stage = f"--shortlist {args.shortlist}"
    provenance = record("index", checkpoints, {"images": len(names), "images_id": image_identity(dataset)},
                        dtype=args.dtype)
    chunks = collection.encoded_chunks(model, dataset, shortlist_model, args.batch_size, device)
    meta = collection.build(args.out.rstrip("/"), chunks, len(dataset), names, provenance, dtype=args.dtype,
                            kind=args.index_type, first_stage=first_stage, replace=args.overwrite)
    print(f"indexed {len(names)} images -> {args.out} ({args.dtype} features, {args.index_type} index; "
          f"{meta['build_seconds']['features']:.1f}s encoding, {meta['build_seconds']['index']:.1f}s indexing)")
    return meta


def regions_of_images(args, cfg) -> str:
    """A region model indexing --images: their regions, extracted with --detector into
    OUT_STEM.regions.npy (+ _boxes.npy, .json) beside the index, or reused from there when that file
    holds the same images from the same detector and protocol; a stopped extraction is continued."""
    from detector.config import read_config
    from detector.extraction import output_paths
    from detector.images import list_images
    from detector.model import resolve_detector
    from detector.record import regions_record
    from provenance import file_sha256
    from tools import extract_regions

    if pair_of(cfg).collection_option != "regions":
        raise ConfigError(f"--detector extracts regions for region models; {args.checkpoint} reads --images itself")
    if not args.images or not args.detector:
        pair = pair_of(cfg)
        raise ConfigError(f"{args.checkpoint} is a {pair.name} model ({pair.summary}): index its collection with "
                          "--regions, or give --detector with --images to extract their regions first")
    if args.regions:
        raise ConfigError("give --regions FEATS.npy or --images with --detector, not both")
    folder = resolve_detector(args.detector)
    width = read_config(folder).res2_out_channels * 8
    if width != cfg.img_dim:
        raise ConfigError(f"--detector {args.detector} gives {width}-d regions; {args.checkpoint} reads "
                          f"{cfg.img_dim}-d ones")
    target = args.out.rstrip("/")[:-len(".index")] + ".regions.npy"
    found = regions_record(target)
    if found is not None and not args.overwrite:
        record = found[0]
        listed = {name for name, _ in list_images(args.images)}
        had = {image["name"] for image in record["images"]} | {item["name"] for item in record["skipped"]}
        if (record["detector"]["sha256"] == file_sha256(os.path.join(folder, "pytorch_model.bin"))
                and record["protocol"] == args.protocol and listed == had):
            print(f"using the regions extracted before: {target}")
            return target
        raise ConfigError(f"{target} holds regions of other images, detector or protocol; give --overwrite to "
                          "extract them again")
    argv = ["--detector", args.detector, "--images", args.images, "--out", target, "--protocol", args.protocol,
            "--device", args.device]
    if os.path.isdir(output_paths(target)["work"]) and not args.overwrite:
        argv.append("--resume")
    elif args.overwrite:
        argv.append("--overwrite")
    try:
        extract_regions.main(argv)
    except Stopped as exc:
        raise Stopped(exc.signum, f"the extraction of {args.images} stopped; its work is kept beside {target}: run "
                                  "the same index command again to continue it") from None
    return target


def open_index(args, device, index=None):
    """The index and its models (from --checkpoint / --shortlist or where they were), checked."""
    index = index or collection.CollectionIndex(args.index)
    saved = index.provenance["checkpoints"]
    path = args.checkpoint or saved[0]["file"]
    check_checkpoint(saved[0], path, f"index {args.index}")
    model, _, encoder = load(path, device)
    shortlister = None
    if len(saved) > 1:
        other = getattr(args, "shortlist", None) or saved[1]["file"]
        check_checkpoint(saved[1], other, f"index {args.index}")
        shortlister = load(other, device)
    return index, (model, encoder), shortlister


def query_vectors(model, encoder, shortlister, queries: list[str], device, batch_size):
    """(prepared query captions, their first-stage vectors)."""
    vectors: list = []
    items = encode_captions(model, encoder, queries, device, batch_size, vectors if shortlister is None else None)
    if shortlister is not None:
        encode_captions(shortlister[0], shortlister[2], queries, device, batch_size, vectors)
    return items, torch.cat(vectors).numpy()


def rank_text(index, model, captions: EncodedItems, vectors: np.ndarray, top: int, rerank_k: int | None, device,
              batch_size: int) -> tuple[list, dict]:
    """Per query: the top images [(row, head score)], and the seconds each stage took."""
    timing = {"search": 0.0, "rerank": 0.0}
    results = []
    for query in range(len(captions)):
        started = time.perf_counter()
        one = EncodedItems.from_padded(*captions.gather(torch.tensor([query]), torch.device("cpu")))
        if rerank_k is None:
            scores = np.concatenate([score_all(model.head, items, one, device, progress=False)[:, 0]
                                     for _, items in index.chunks(batch_size * 8)])
            rows = np.arange(len(index))
        else:
            rows = np.sort(index.search(vectors[query:query + 1], rerank_k)[0])
            rows = rows[rows >= 0]
            timing["search"] += time.perf_counter() - started
            started = time.perf_counter()
            scores = score_all(model.head, index.items(rows), one, device, progress=False)[:, 0]
        best = np.argsort(-scores, kind="stable")[:top]
        results.append([(int(rows[i]), float(scores[i])) for i in best])
        timing["rerank"] += time.perf_counter() - started
    return results, timing


def command_text(args, device) -> list:
    started = time.perf_counter()
    index, (model, encoder), shortlister = open_index(args, device)
    loaded = time.perf_counter()
    captions, vectors = query_vectors(model, encoder, shortlister, args.query, device, args.batch_size)
    encoded = time.perf_counter()
    results, timing = rank_text(index, model, captions, vectors, args.top, None if args.exhaustive else args.rerank_k,
                                device, args.batch_size)
    for query, best in zip(args.query, results):
        print(f"{query!r}:")
        for rank, (row, score) in enumerate(best, start=1):
            print(f"  {rank}. {index.names[row]}  {score:.4f}")
    stages = "exhaustive head scoring" if args.exhaustive else f"shortlist {timing['search']:.3f}s, re-rank " \
                                                                f"{min(args.rerank_k, len(index))}"
    print(f"{len(args.query)} quer{'y' if len(args.query) == 1 else 'ies'} over {len(index)} images: loading "
          f"{loaded - started:.2f}s, encoding {encoded - loaded:.3f}s, {stages} {timing['rerank']:.3f}s")
    return results


def command_image(args, device) -> list:
    index = collection.CollectionIndex(args.index)
    if not 0 <= args.item < len(index):
        raise ConfigError(f"--item {args.item}: the index has items 0..{len(index) - 1}")
    captions = read_caption_file(args.captions)
    index, (model, encoder), _ = open_index(args, device, index)
    caption_items = encode_captions(model, encoder, captions, device, args.batch_size)
    scores = score_all(model.head, index.items(np.array([args.item])), caption_items, device, progress=False)[0]
    best = [(int(row), float(scores[row])) for row in np.argsort(-scores, kind="stable")[:args.top]]
    print(f"{index.names[args.item]}:")
    for rank, (row, score) in enumerate(best, start=1):
        print(f"  {rank}. {captions[row]!r}  {score:.4f}")
    return best


def read_caption_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"--captions {path} is not a file (one caption a line)")
    captions = read_captions(path)
    if not captions:
        raise DataError(f"--captions {path} holds no captions (one caption a line)")
    return captions


def command_export(args, device) -> None:
    if args.checkpoint and not args.captions:
        raise ConfigError("--checkpoint is used by export only to encode --captions; the index's features are "
                          "exported as they are")
    outputs = Outputs(args.overwrite)
    outputs.file(args.out, "--out", ".npz")
    outputs.reads(args.captions, "--captions")
    outputs.check()
    if os.path.realpath(os.path.abspath(args.out)).startswith(os.path.realpath(args.index) + os.sep):
        raise ConfigError(f"--out {args.out} lies inside --index {args.index}, which holds only the index's own "
                          "files; write it elsewhere")
    index = collection.CollectionIndex(args.index)
    arrays = {"image_features": np.asarray(index.local), "image_names": np.array(index.names),
              "global_vectors": np.load(os.path.join(args.index, "global.npy")),
              "provenance": np.array(repr(index.provenance))}
    if args.captions:
        captions = read_caption_file(args.captions)
        _, (model, encoder), _ = open_index(args, device, index)
        items = encode_captions(model, encoder, captions, device, args.batch_size)
        arrays["caption_features"] = items.flat.numpy()
        if items.lengths is not None:
            arrays["caption_lengths"] = items.lengths.numpy()
    tmp = f"{args.out}.tmp-{os.getpid()}.npz"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {args.out}: cannot create its folder ({exc.strerror or exc})") from exc
    np.savez(tmp, **arrays)
    publish(tmp, args.out, args.overwrite)
    print(f"features -> {args.out} ({', '.join(arrays)})")


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    index = sub.add_parser("index", help="encode a collection once")
    index.add_argument("--checkpoint", required=True)
    index.add_argument("--images", help="folder of images (models on raw images, e.g. ESL-CLIP)")
    index.add_argument("--regions", help="BUTD feature file, images x regions x dim (region models)")
    index.add_argument("--detector", help="region models indexing --images: the detector that extracts their "
                                          "regions first (tools/extract_regions.py), kept as OUT.regions.npy")
    index.add_argument("--protocol", default="butd", choices=("butd", "lxmert"), help="with --detector")
    index.add_argument("--shortlist", default=None, help="a checkpoint whose global embeddings shortlist (a cosine "
                                                          "model of the same collection kind)")
    index.add_argument("--dtype", default="fp16", choices=tuple(collection.DTYPES),
                       help="of the stored head features (fp16 halves the disk and the reads)")
    index.add_argument("--index_type", default="flat", choices=INDEX_KINDS,
                       help="FAISS index of the global vectors: flat = exact; ivf, hnsw = approximate, faster "
                            "on millions of images")
    index.add_argument("--out", required=True, help="the index folder to write (NAME.index)")
    text = sub.add_parser("text", help="top-k images of the index for text queries")
    text.add_argument("--index", required=True)
    text.add_argument("--query", action="append", required=True, help="a caption; repeat for several")
    text.add_argument("--rerank_k", type=int, default=100, help="images shortlisted per query for the head")
    text.add_argument("--exhaustive", action="store_true", help="score every image with the head (no shortlist)")
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
        command.add_argument("--shortlist", default=None, help="the index's --shortlist checkpoint, if it has moved")
    for command in (index, text, image, export):
        command.add_argument("--top", type=int, default=5)
        command.add_argument("--batch_size", type=int, default=128)
        command.add_argument("--device", default="auto")
    for command in (index, export):
        command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    for option in ("top", "batch_size", "rerank_k"):
        if getattr(args, option, 1) < 1:
            raise ConfigError(f"--{option} must be at least 1 (got {getattr(args, option)})")
    if any(not query.strip() for query in getattr(args, "query", None) or []):
        raise ConfigError("--query must be a caption (got an empty one)")
    setup_logging()
    device = resolve_device(args.device)
    commands = {"index": command_index, "text": command_text, "image": command_image, "export": command_export}
    return commands[args.command](args, device)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
