"""What tools/report.py runs once its command line holds: the scores of the split, the figures and
the page. Its imports are the heavy ones (torch, transformers, the model code), which the command
line of tools/report.py answers without; it imports this module once it has checked its options."""

import base64
import html
import io
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from checkpoints.atomic import atomic_write_text, write_json
from checkpoints.hub import resolve as resolve_checkpoint
from checkpoints.loading import load_model, read_checkpoint_config
from cli.logs import setup_logging
from detector.record import regions_record
from devices import resolve_device
from errors import ConfigError
from evaluation.ensemble import check_same_captions
from evaluation.metrics import per_query_results, retrieval_metrics, shortlist_results
from evaluation.protocol import compute_split_scores, encode_split
from outputs.folders import FolderLock
from pairs import load_eval_split
from provenance import checkpoint_identity, data_identity, read_scores, record
from retrieval.two_stage import two_stage_report

THUMBNAIL = 96


def pyplot():
    try:
        # matplotlib is optional (requirements-extra.txt): missing, it is one line saying what to install
        import matplotlib
    except ImportError as exc:
        raise ConfigError("tools/report.py draws its figures with matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    # pyplot once the backend is set: Agg, files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: str) -> str:
    """Write the PNG and return it as a data URI for the page."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def recall_curve(plt, results: dict, path: str) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    ks = np.arange(1, 101)
    for label, direction in (("image to text", "i2t"), ("text to image", "t2i")):
        ranks = np.array([query["rank"] for query in results[direction]])
        axis.plot(ks, [100 * np.mean(ranks < k) for k in ks], label=label)
    axis.set_xscale("log")
    axis.set_xlabel("K")
    axis.set_ylabel("Recall@K (%)")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend()
    uri = save_figure(figure, path)
    plt.close(figure)
    return uri


def dimension_figure(plt, head, path: str) -> tuple[str, str]:
    """(data URI, caption) of what the head learned about dimensions."""
    with torch.no_grad():
        if hasattr(head, "dependency"):
            dependency, _ = head.dependency()
            matrix = dependency.cpu().numpy()
            figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
            shown = left.imshow(matrix, cmap="viridis", aspect="auto")
            figure.colorbar(shown, ax=left)
            left.set_title("dependency matrix D (rows l2-normalised)")
            row_max = matrix.max(1, keepdims=True)
            kept = (matrix > 0.01 * row_max).mean(1)
            right.hist(kept * 100, bins=30)
            right.set_xlabel("entries above 1% of their row's maximum (%)")
            right.set_ylabel("rows")
            right.set_title("sparsity of D")
            caption = (f"X-Dim: D is {matrix.shape[0]} x {matrix.shape[1]}; a row keeps on average "
                       f"{100 * kept.mean():.1f}% of its entries above 1% of its maximum.")
        elif hasattr(head, "level_weights"):
            coefficients = (head.coefficients() if hasattr(head, "coefficients") else head.level_weights).cpu().numpy()
            levels = head.image_levels
            figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
            left.bar(range(len(coefficients)), coefficients)
            left.set_xlabel("level l (width d / k^l)")
            left.set_title("level weights a_l")
            if levels.strategy == "adaptive":
                mask = levels.selective_masks()[0].cpu().numpy()
                shown = right.imshow(mask, cmap="coolwarm", aspect="auto")
                figure.colorbar(shown, ax=right)
                right.set_title(f"A: selective mask of level 1 ({mask.shape[0]} x {mask.shape[1]}, top-2 per row)")
            else:
                kernels = np.stack([kernel.weight.sum(0)[0].cpu().numpy() for kernel in levels.kernels])
                shown = right.imshow(kernels, cmap="coolwarm", aspect="auto")
                figure.colorbar(shown, ax=right)
                right.set_xticks(range(kernels.shape[1]))
                right.set_yticks(range(len(kernels)), [str(level + 1) for level in range(len(kernels))])
                right.set_xlabel("position in the measure-unit")
                right.set_ylabel("level")
                right.set_title("H: summed kernels per level (image side)")
            caption = f"ESL ({levels.strategy}): {len(coefficients)} levels; a_l = " + \
                ", ".join(f"{c:.3f}" for c in coefficients)
        else:
            return "", "The cosine head has no dimension structure to show."
    uri = save_figure(figure, path)
    plt.close(figure)
    return uri, caption


TOP_REGIONS = 5
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4")


class RegionImage(str):
    """The path of an image whose regions were extracted (tools/extract_regions.py), with its boxes."""

    def __new__(cls, path: str, boxes):
        made = super().__new__(cls, path)
        made.boxes = boxes
        return made


def region_images(image_set):
    """For region features written by tools/extract_regions.py (FEATS.json and FEATS_boxes.npy
    beside {split}_ims.npy): each image's path with its boxes; otherwise None."""
    split = getattr(image_set, "split", None)
    path = getattr(split, "ims_file", None)
    found = regions_record(path, len(image_set)) if path and getattr(split, "image_divisor", 5) == 5 else None
    if found is None:
        return None
    record, boxes = found
    return [RegionImage(image["path"], np.asarray(boxes[row][:min(TOP_REGIONS, image.get("regions", TOP_REGIONS))]))
            for row, image in enumerate(record["images"])]


def thumbnail(path: str) -> str:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        width = image.width
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        boxes = getattr(path, "boxes", None)
        if boxes is not None:        # the top regions (the extractor's row order), boxed
            draw, scale = ImageDraw.Draw(image), image.width / width
            for colour, box in zip(BOX_COLOURS, boxes):
                draw.rectangle([float(v) * scale for v in box], outline=colour, width=2)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_cell(index: int, correct: bool, score: float, paths, captions) -> str:
    mark = "good" if correct else "bad"
    if paths is not None:
        body = f'<img src="{thumbnail(paths[index])}" alt="image {index}">'
    else:
        body = f'<div class="label">image {index}<br><i>{html.escape(captions[5 * index][:60])}</i></div>'
    return f'<figure class="{mark}">{body}<figcaption>#{index} &middot; {score:.3f}</figcaption></figure>'


def sample(ranks: np.ndarray, count: int, seed: int) -> list[int]:
    """`count` queries at random, failures (rank > 0) first, the worst first."""
    picks = np.random.default_rng(seed).choice(len(ranks), size=min(count, len(ranks)), replace=False)
    return sorted(picks.tolist(), key=lambda q: (-int(ranks[q] > 0), -int(ranks[q]), q))


def page(results, metrics: dict, captions, paths, title, curve, dims, dims_caption, queries, seed) -> str:
    """`results`: every query's rank and top items with their scores (evaluation.metrics
    per_query_results, or shortlist_results of two-stage retrieval)."""
    i2t = np.array([query["rank"] for query in results["i2t"]])
    t2i = np.array([query["rank"] for query in results["t2i"]])
    rows = []
    for caption in sample(t2i, queries, seed):
        found = results["t2i"][caption]
        cells = "".join(image_cell(i, i == caption // 5, score, paths, captions)
                        for i, score in zip(found["top"][:5], found["scores"]))
        rows.append(f'<tr><td class="query">{html.escape(captions[caption])}<div class="rank">rank of its image: '
                    f'{t2i[caption] + 1}</div></td><td>{cells}</td></tr>')
    caption_rows = "\n".join(rows)
    rows = []
    for image in sample(i2t, queries, seed + 1):
        found = results["i2t"][image]
        items = "".join(f'<li class="{"good" if c // 5 == image else "bad"}">{html.escape(captions[c])} '
                        f'<span class="score">{score:.3f}</span></li>'
                        for c, score in zip(found["top"][:5], found["scores"]))
        best = found["scores"][0] if found["scores"] else float("nan")
        query = image_cell(image, True, best, paths, captions).replace('class="good"', "")
        rows.append(f'<tr><td class="query">{query}<div class="rank">rank of its best caption: {i2t[image] + 1}'
                    f'</div></td><td><ol>{items}</ol></td></tr>')
    image_rows = "\n".join(rows)
    summary = (f"Image to text R@1 {metrics['i2t']['r1']:.1f}, R@5 {metrics['i2t']['r5']:.1f}, "
               f"R@10 {metrics['i2t']['r10']:.1f}; text to image R@1 {metrics['t2i']['r1']:.1f}, "
               f"R@5 {metrics['t2i']['r5']:.1f}, R@10 {metrics['t2i']['r10']:.1f}; rSum {metrics['rsum']:.1f}")
    dims_html = f'<img class="figure" src="{dims}" alt="dimensions"><p>{html.escape(dims_caption)}</p>' if dims \
        else f"<p>{html.escape(dims_caption)}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 18px; margin-top: 32px; }}
table {{ border-collapse: collapse; width: 100%; }} td {{ border-top: 1px solid #ddd; padding: 8px; vertical-align: top; }}
td.query {{ width: 280px; }} .rank {{ color: #666; font-size: 12px; margin-top: 4px; }}
figure {{ display: inline-block; margin: 0 6px 0 0; padding: 3px; border: 3px solid transparent; text-align: center; }}
figure.good {{ border-color: #2a9d3c; }} figure.bad {{ border-color: #d0d0d0; }}
figure img {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; object-fit: cover; display: block; }}
figcaption {{ font-size: 11px; color: #555; }} .label {{ width: {THUMBNAIL}px; height: {THUMBNAIL}px; font-size: 11px;
  background: #f3f3f3; overflow: hidden; }}
li.good {{ color: #1d7a2e; font-weight: 600; }} li.bad {{ color: #444; }} .score {{ color: #888; font-size: 11px; }}
img.figure {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{summary}. Correct items are marked green; sampled queries are listed failures first.</p>
<h2>Recall@K</h2><img class="figure" src="{curve}" alt="Recall@K curve">
<h2>What the head learned about dimensions</h2>{dims_html}
<h2>Caption queries: top-5 images</h2><table>{caption_rows}</table>
<h2>Image queries: top-5 captions</h2><table>{image_rows}</table>
</body></html>
"""



def two_stage_results(loaded, split_data, shortlister, args, device, options):
    """(per-query results, metrics, title note) of two-stage retrieval on the split."""
    model = loaded.model.to(device)
    encoded = encode_split(model, split_data, loaded.caption_encoder(), device, global_vectors=shortlister is None,
                           **options)
    if shortlister is None:
        first_stage = encoded[2:]
    else:
        other = load_model(shortlister)
        first_stage = encode_split(other.model.to(device), split_data, other.caption_encoder(), device,
                                   global_vectors=True, **options)[2:]
    report, _, whole = two_stage_report(model.head, encoded[:2], first_stage, args.rerank_k, "flat", False, args.split,
                                        device, args.eval_mem_gb)
    cost = report["two_stage"]
    note = f"; two-stage, K = {cost['k']}: {cost['pairs_scored']:,} of {cost['exhaustive_pairs']:,} pairs scored"
    return shortlist_results(whole), report, note


def run(args, outputs) -> str:
    """The report of the checked command line `args` into --out (`outputs`: its checked Outputs)."""
    # a model folder, a file, or a hub name (ORG/NAME) resolved through the HuggingFace cache
    args.checkpoint = resolve_checkpoint(args.checkpoint, "--checkpoint")
    args.shortlist = resolve_checkpoint(args.shortlist, "--shortlist")
    plt = pyplot()
    setup_logging()
    read = read_checkpoint_config(args.checkpoint, args)
    split_data = load_eval_split(read.cfg, args.split)
    image_set, captions, per_image = split_data.images, split_data.captions, split_data.captions_per_image
    data = data_identity(image_set, captions, args.split)
    shortlister = read_checkpoint_config(args.shortlist, args) if args.shortlist else None
    if shortlister is not None:
        check_same_captions((args.checkpoint, captions), (f"--shortlist {args.shortlist}",
                                                          load_eval_split(shortlister.cfg, args.split).captions))
    sims = read_scores(args.sims, args.checkpoint, data) if args.sims else None
    loaded = load_model(read)
    device = resolve_device(args.device)
    options = dict(batch_size=args.eval_batch_size, workers=args.workers)
    if args.rerank_k:
        results, metrics, title_note = two_stage_results(loaded, split_data, shortlister, args, device, options)
    else:
        if sims is None:
            sims, _ = compute_split_scores(loaded.model.to(device), split_data, loaded.caption_encoder(), device,
                                           mem_gb=args.eval_mem_gb, **options)
        results, metrics, title_note = per_query_results(sims, per_image=per_image), retrieval_metrics(sims, per_image), ""
    lock = FolderLock(args.out, "--out").acquire()
    try:
        outputs.claim()
        paths = getattr(image_set, "paths", None) or region_images(image_set)
        curve = recall_curve(plt, results, os.path.join(args.out, "recall_at_k.png"))
        dims, dims_caption = dimension_figure(plt, loaded.model.cpu().head, os.path.join(args.out, "dimensions.png"))
        title = f"{loaded.source}: split {args.split} ({len(image_set)} images, {len(captions)} captions){title_note}"
        target = os.path.join(args.out, "index.html")
        atomic_write_text(page(results, metrics, captions, paths, title, curve, dims, dims_caption, args.queries,
                               args.seed), target)
        checkpoints = [checkpoint_identity(args.checkpoint)] + ([checkpoint_identity(args.shortlist)]
                                                                if args.shortlist else [])
        write_json(record("report", checkpoints, data, sims_file=args.sims, rerank_k=args.rerank_k),
                   os.path.join(args.out, "report.json"))
    finally:
        lock.release()
    print(f"report -> {target}")
    return target

