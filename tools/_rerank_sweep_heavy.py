"""What tools/rerank_sweep.py runs once its command line holds: the split encoded and shortlisted
once, each K re-ranked and timed, sweep.json and the figure. Its imports are the heavy ones (torch,
transformers, the model code, matplotlib), which the command line of tools/rerank_sweep.py answers
without; it imports this module once it has checked its options."""

import os
import time

from checkpoints.atomic import write_json
from checkpoints.hub import resolve as resolve_checkpoint
from checkpoints.loading import load_model, read_checkpoint_config
from cli.logs import setup_logging
from devices import resolve_device
from evaluation.metrics import DIRECTIONS, RECALL_AT, recall_line, retrieval_metrics, two_stage_metrics
from evaluation.protocol import encode_split
from outputs.folders import FolderLock
from pairs import load_eval_split
from provenance import checkpoint_identity, data_identity, read_scores, record
from retrieval.two_stage import Shortlists, rerank, shortlist
from tools._report_heavy import pyplot


def run(args, outputs) -> list[dict]:
    """The sweep of the checked command line `args` into --out (`outputs`: its checked Outputs)."""
    # a model folder, a file, or a hub name (ORG/NAME) resolved through the HuggingFace cache
    args.checkpoint = resolve_checkpoint(args.checkpoint, "--checkpoint")
    plt = pyplot()
    setup_logging()
    lock = FolderLock(args.out, "--out").acquire()      # before any work: one sweep writes a folder
    try:
        rows = sweep(args, plt, outputs)
    except BaseException:
        lock.release(undo=True)
        raise
    lock.release()
    return rows


def sweep(args, plt, outputs) -> list[dict]:
    read = read_checkpoint_config(args.checkpoint, args)
    identity = checkpoint_identity(args.checkpoint)     # the file read, as load_model checks it still is
    split_data = load_eval_split(read.cfg, args.split)
    data = data_identity(split_data.images, split_data.captions, args.split)
    per_image = split_data.captions_per_image
    exhaustive = None
    if args.compare_sims:
        exhaustive = retrieval_metrics(read_scores(args.compare_sims, args.checkpoint, data), per_image)
    loaded = load_model(read)
    device = resolve_device(args.device)
    model = loaded.model.to(device)
    images, captions, image_vectors, caption_vectors = encode_split(
        model, split_data, loaded.caption_encoder(), device, batch_size=args.eval_batch_size, workers=args.workers,
        global_vectors=True)
    widest = shortlist(image_vectors, caption_vectors, max(args.k))
    rows = []
    for k in sorted(set(args.k)):
        lists = Shortlists(widest.i2t[:, :k], widest.t2i[:, :k], widest.seconds, "flat")
        started = time.perf_counter()
        result = rerank(model.head, images, captions, lists, device, progress=False)
        metrics = two_stage_metrics(lists.i2t, result.i2t_scores, lists.t2i, result.t2i_scores, per_image)
        rows.append({"k": k, "k_used": {"i2t": lists.i2t.shape[1], "t2i": lists.t2i.shape[1]},   # K <= items
                     "i2t": metrics["i2t"], "t2i": metrics["t2i"], "rsum": metrics["rsum"],
                     "pairs_scored": result.pairs_scored, "rerank_seconds": round(time.perf_counter() - started, 4)})
        recalls = " | ".join(f"{d} " + recall_line(metrics, d, width=5, sep=" ") for d in DIRECTIONS)
        print(f"K {k:4d}: {recalls} | {result.pairs_scored:,} pairs, {rows[-1]['rerank_seconds']:.2f}s")
    below = [k for k in sorted(set(args.k)) if k < max(RECALL_AT) and k < max(len(images), len(captions))]
    if below:
        cuts = "/".join(f"R@{cut}" for cut in RECALL_AT if cut > below[0])
        print(f"note: K {', '.join(map(str, below))} below a Recall@K cut-off ({cuts}): R@k for k > K counts only "
              "what the shortlist of K holds, so it equals R@K at most, not the exhaustive R@k")
    if exhaustive:
        print(f"exhaustive: i2t R@1 {exhaustive['i2t']['r1']:.1f}, t2i R@1 {exhaustive['t2i']['r1']:.1f}, "
              f"{len(images) * len(captions):,} pairs")
    outputs.claim()
    figure(plt, rows, exhaustive, os.path.join(args.out, "rerank_sweep.png"))
    write_json({"provenance": record("rerank_sweep", [identity], data), "sweep": rows, "exhaustive": exhaustive},
               os.path.join(args.out, "sweep.json"))
    print(f"sweep -> {os.path.join(args.out, 'sweep.json')}, figure -> {os.path.join(args.out, 'rerank_sweep.png')}")
    return rows


def figure(plt, rows: list[dict], exhaustive: dict | None, path: str) -> None:
    plot, axis = plt.subplots(figsize=(6, 3.8))
    ks = [row["k"] for row in rows]
    for direction, label, color in (("i2t", "image to text", "tab:blue"), ("t2i", "text to image", "tab:orange")):
        axis.plot(ks, [row[direction]["r1"] for row in rows], marker="o", color=color, label=f"{label} R@1")
        if exhaustive:
            axis.axhline(exhaustive[direction]["r1"], color=color, linestyle="--", linewidth=1,
                         label=f"{label} R@1, exhaustive")
    axis.set_xscale("log")
    axis.set_xlabel("shortlist size K (log)")
    axis.set_ylabel("R@1 (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    plot.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(plot)
