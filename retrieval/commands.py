"""The commands of tools/retrieve.py (index, text, image, export), run once its command line is
parsed and checked; see that file for what they do."""

import argparse
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from checkpoints.atomic import publish
from checkpoints.loading import load_model, read_checkpoint_config
from detector.command import build_parser, extract
from detector.config import read_config
from detector.extraction import output_paths
from detector.images import list_images
from detector.model import resolve_detector
from detector.record import regions_record
from datasets.batching import CaptionSet, Collate
from datasets.precomp import read_captions
from errors import ConfigError, DataError, Stopped
from evaluation.scoring import EncodedItems, encode_items, score_all
from outputs.folders import Outputs
from outputs.signals import stop_signals_unwind
from pairs import pair_of
from provenance import check_checkpoint, checkpoint_identity, file_sha256, image_identity, record
from retrieval import collection


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
    outputs = Outputs(args.overwrite, "retrieve.py")
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
    option = pair_of(cfg).collection_option
    paths, boxes = collection.item_files(option, getattr(args, option), names)   # where the items came from
    chunks = collection.encoded_chunks(model, dataset, shortlist_model, args.batch_size, device)
    with stop_signals_unwind(f"index {args.out}"):
        meta = collection.build(args.out.rstrip("/"), chunks, len(dataset), names, provenance, dtype=args.dtype,
                                kind=args.index_type, first_stage=first_stage, replace=args.overwrite, paths=paths,
                                boxes=boxes)
    print(f"indexed {len(names)} images -> {args.out} ({args.dtype} features, {args.index_type} index; "
          f"{meta['build_seconds']['features']:.1f}s encoding, {meta['build_seconds']['index']:.1f}s indexing)")
    return meta


def regions_of_images(args, cfg) -> str:
    """A region model indexing --images: their regions, extracted with --detector into
    OUT_STEM.regions.npy (+ _boxes.npy, .json) beside the index, or reused from there when that file
    holds the same images from the same detector and protocol; a stopped extraction is continued."""
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
        extract(build_parser().parse_args(argv))
    except Stopped as exc:
        raise Stopped(exc.signum, f"the extraction of {args.images} stopped; its work is kept beside {target}: run "
                                  "the same index command again to continue it") from None
    return target


def open_index(args, device, index=None):
    """The index and its models (from --checkpoint / --shortlist or where they were), checked."""
    index = index or collection.CollectionIndex(args.index)
    saved = index.provenance["checkpoints"]
    if len(saved) == 1 and getattr(args, "shortlist", None):
        raise ConfigError(f"--shortlist {args.shortlist}: index {args.index} was built without a shortlist checkpoint "
                          f"(its first stage: {index.meta.get('first_stage', 'the model')}); drop --shortlist, or "
                          "index again with it")
    path = args.checkpoint or saved[0]["file"]
    check_checkpoint(saved[0], path, f"index {args.index}")
    model, _, encoder = load(path, device)
    shortlister = None
    if len(saved) > 1:
        other = getattr(args, "shortlist", None) or saved[1]["file"]
        check_checkpoint(saved[1], other, f"index {args.index}", "--shortlist")
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
              batch_size: int, first_stage: list | None = None) -> tuple[list, dict]:
    """Per query: the top images [(row, head score)], and the seconds each stage took; `first_stage`,
    when given, receives per query the shortlisted rows in first-stage order (best first)."""
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
            found = index.search(vectors[query:query + 1], rerank_k)[0]
            if first_stage is not None:
                first_stage.append(found[found >= 0])
            rows = np.sort(found)
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
    outputs = Outputs(args.overwrite, "retrieve.py")
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
    outputs.claim()
    np.savez(tmp, **arrays)
    publish(tmp, args.out, args.overwrite)
    print(f"features -> {args.out} ({', '.join(arrays)})")
