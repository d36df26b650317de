"""How retrieval cost grows with the collection, and what two-stage retrieval costs in recall.

    python bench/bench_retrieval.py scale --sizes 10000 100000       # synthetic X-Dim region indexes
    python bench/bench_retrieval.py quality                          # trained demo models, F30K and COCO layouts

`scale` builds on-disk indexes (tools/retrieve.py's format) of synthetic collections at the real
X-Dim sizes (36 regions x d=1024 per image, fp16; 1024-d global vectors, exact flat FAISS index) and
queries them with a BERT-base-sized text tower (random weights): build time, disk, peak resident
memory of the query process (a fresh one), and text-query latency p50 / p95 for two-stage
retrieval (K = 100) and for exhaustive head scoring of every image. The image features are written
as the head prepares them (random unit vectors), so the build time is that of the index, not of the
region encoder; its cost per image is measured separately and reported.

`quality` trains the demo's X-Dim and ESL-H models (and an X-Dim with --global_loss_weight, and a
cosine model as a shortlist) on the demo's generated regions, then evaluates Flickr30K-layout (1K x 5K)
and COCO-layout (5K x 25K) test splits exhaustively and in two stages at K = 100 with test.py /
testall.py, side by side: Recall@1, the pairs the head scores and the end-to-end seconds.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")     # before transformers and huggingface_hub read it

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from bench_scoring import peak_rss  # noqa: E402
from cli.commands import evaluate, train  # noqa: E402
from config.options import config_from_saved  # noqa: E402
from datasets.captions import load_tokenizer  # noqa: E402
from demo.data import write_region_dataset  # noqa: E402
from demo.tiny_models import write_bert_vocab, write_tiny_bert  # noqa: E402
from pairs import build_model, pair_of  # noqa: E402
from provenance import record  # noqa: E402
from retrieval import collection  # noqa: E402
from retrieval.commands import query_vectors, rank_text  # noqa: E402

WORDS = "a man in a red shirt rides a bicycle down a busy street next to a bus".split()


def tiny_vocab_bert(folder: str, hidden: int, layers: int, heads: int) -> str:
    """A BERT of the given size with random weights and a vocabulary of the query words."""
    vocab = write_bert_vocab([" ".join(WORDS)], folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=4 * hidden, pad_token_id=0),
              add_pooling_layer=False).save_pretrained(folder)
    return folder


def xdim_config(bert: str, dim: int = 1024):
    return config_from_saved({"encoders": "region_bert", "sim_head": "xdim", "embed_size": dim, "img_dim": 2048,
                              "bert_path": bert}, legacy=False)


def xdim_model(bert: str, dim: int = 1024):
    torch.manual_seed(0)
    return build_model(xdim_config(bert, dim)).eval()


def synthetic_chunks(count: int, regions: int, dim: int, chunk: int = 2000, seed: int = 0):
    generator = np.random.default_rng(seed)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        local = generator.standard_normal((n, regions, dim), dtype=np.float32)
        local /= np.linalg.norm(local, axis=-1, keepdims=True)
        pooled = local.mean(1)
        yield local, pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def build_synthetic_index(folder: str, size: int) -> None:
    """An X-Dim-sized index (36 x 1024 fp16 per image) of `size` synthetic images, as `scale` times it."""
    collection.build(folder, synthetic_chunks(size, 36, 1024), size, [f"image_{i}" for i in range(size)],
                     record("index", [], {"images": size}), dtype="fp16", first_stage="synthetic pooled",
                     progress=False)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(base, name)) for base, _, names in os.walk(folder) for name in names)


def queries(count: int, seed: int = 1) -> list[str]:
    generator = np.random.default_rng(seed)
    return [" ".join(generator.choice(WORDS, size=12)) for _ in range(count)]


def query_process(args) -> None:
    """Run in a fresh process: open an index, answer queries, print latencies and peak RSS (JSON)."""
    torch.set_num_threads(args.threads)
    model, cfg = xdim_model(args.bert), xdim_config(args.bert)
    encoder = pair_of(cfg).caption_encoder(cfg, load_bert_tokenizer(args.bert), 512)
    index = collection.CollectionIndex(args.index)
    latencies = []
    for text in queries(args.queries):
        started = time.perf_counter()
        items, vectors = query_vectors(model, encoder, None, [text], torch.device("cpu"), 1)
        rank_text(index, model, items, vectors, 5, None if args.exhaustive else args.rerank_k, torch.device("cpu"),
                  args.batch_size)
        latencies.append(time.perf_counter() - started)
    peak = peak_rss() / 2**30
    print(json.dumps({"latencies": latencies, "peak_rss_gb": peak}))


def load_bert_tokenizer(folder: str):
    return load_tokenizer("bert", folder)


def measure_queries(index: str, bert: str, count: int, exhaustive: bool, rerank_k: int, threads: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "_query", "--index", index, "--bert", bert, "--queries",
               str(count), "--rerank_k", str(rerank_k), "--threads", str(threads)] + (["--exhaustive"] if exhaustive
                                                                                        else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ,
                                                                                      "HF_HUB_OFFLINE": "1"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # the first query pays for the page cache and lazy initialisation; report the steady state
    steady = np.array(report["latencies"][1:] or report["latencies"])
    return {"p50": float(np.percentile(steady, 50)), "p95": float(np.percentile(steady, 95)),
            "first": report["latencies"][0], "queries": len(steady), "peak_rss_gb": report["peak_rss_gb"]}


def region_encoder_seconds_per_image(model, images: int = 256) -> float:
    regions = torch.rand(images, 36, 2048)
    with torch.inference_mode():
        model.encode_images(regions[:8], None)
        started = time.perf_counter()
        for start in range(0, images, 64):
            features, lengths = model.encode_images(regions[start:start + 64], None)
            model.head.prepare_images(features, lengths)
    return (time.perf_counter() - started) / images


def scale(args) -> list[dict]:
    work = tempfile.mkdtemp(prefix="bench_retrieval_", dir=args.work)
    rows = []
    try:
        bert = tiny_vocab_bert(os.path.join(work, "bert"), 768, 12, 12)
        encode_cost = region_encoder_seconds_per_image(xdim_model(bert))
        for size in args.sizes:
            folder = os.path.join(work, f"synthetic_{size}.index")
            started = time.perf_counter()
            build_synthetic_index(folder, size)
            build = time.perf_counter() - started
            two_stage = measure_queries(folder, bert, args.queries, False, args.rerank_k, args.threads)
            exhaustive = measure_queries(folder, bert, max(2, args.queries // 10 if size <= 10000 else 2), True,
                                         args.rerank_k, args.threads)
            rows.append({"images": size, "build_seconds": round(build, 1), "disk_gb": folder_bytes(folder) / 2**30,
                         "two_stage": two_stage, "exhaustive": exhaustive,
                         "region_encoder_seconds": round(encode_cost * size, 1)})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def scale_table(rows: list[dict]) -> str:
    lines = ["| images | index build | + region encoder (measured per image) | disk | query RSS | two-stage K=100 "
             "p50 / p95 | exhaustive p50 / p95 |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        t, e = row["two_stage"], row["exhaustive"]
        lines.append(f"| {row['images']:,} | {row['build_seconds']:.0f} s | {row['region_encoder_seconds']:.0f} s | "
                     f"{row['disk_gb']:.2f} GB | {t['peak_rss_gb']:.2f} GB | {t['p50']:.3f} / {t['p95']:.3f} s | "
                     f"{e['p50']:.2f} / {e['p95']:.2f} s |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- quality on demo data

# (model, first stage or None for its own global vectors) of each layout; COCO leaves out the
# global-loss model, whose exhaustive 5K x 25K X-Dim scoring would double the benchmark's time
QUALITY_ROWS = {
    "f30k": [("X-Dim", None), ("X-Dim + global loss 1", None), ("X-Dim", "cosine"), ("ESL-H", None),
             ("ESL-H", "cosine")],
    "coco": [("X-Dim", None), ("X-Dim", "cosine"), ("ESL-H", None), ("ESL-H", "cosine")],
}


def quality(args) -> list[dict]:
    """Train the demo models once into --keep (or a temporary folder), then evaluate each row of
    QUALITY_ROWS exhaustively and in two stages, side by side. With --keep, models already trained
    there are reused (their training is not timed here)."""
    work = args.keep or tempfile.mkdtemp(prefix="bench_retrieval_quality_", dir=args.work)
    data, bert = os.path.join(work, "data"), os.path.join(work, "bert")
    if not os.path.isdir(bert):
        captions = write_region_dataset(data, {"train": 2000, "dev": 100, "test": 1000, "testall": 5000},
                                        regions=12, dim=256, seed=0)
        os.symlink("f30k_precomp", os.path.join(data, "coco_precomp"))       # relative: the folder may move
        write_tiny_bert(bert, captions, hidden=64, layers=2, heads=2)
    common = ["--data_path", data, "--img_dim", "256", "--bert_path", bert, "--embed_size", "128", "--batch_size",
              "64", "--learning_rate", "1e-3", "--lr_update", "3", "--num_epochs", "4", "--workers", "0"]
    models = {"X-Dim": ["--sim_head", "xdim"], "ESL-H": ["--sim_head", "esl_h"],
              "X-Dim + global loss 1": ["--sim_head", "xdim", "--global_loss_weight", "1"],
              "cosine": ["--sim_head", "cosine"]}
    checkpoints = {}
    for name, extra in models.items():
        out = os.path.join(work, name.replace(" ", "_"))
        checkpoints[name] = os.path.join(out, "model_best")
        if not os.path.exists(checkpoints[name]):
            with contextlib.redirect_stdout(io.StringIO()):
                train(common + extra + ["--data_name", "f30k_precomp", "--output_dir", out, "--overwrite"])
    rows, exhaustive_runs = [], {}
    for layout in args.layouts:
        label, data_name, split = (("Flickr30K 1K x 5K", "f30k_precomp", "test") if layout == "f30k"
                                   else ("COCO 5K x 25K", "coco_precomp", "testall"))
        run = (lambda argv: evaluate(argv, "testall", coco_testall=True)) if layout == "coco" else evaluate
        block = (lambda r: r["full_5k"]) if layout == "coco" else (lambda r: r)
        for name, first_stage in QUALITY_ROWS[layout]:
            base = ["--checkpoint", checkpoints[name], "--data_path", data, "--data_name", data_name, "--split", split,
                    "--workers", "0", "--device", "cpu"]
            sims = os.path.join(work, f"{name}_{split}.npy".replace(" ", "_"))
            if (name, split) not in exhaustive_runs:
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    full = run(base + ["--save_sims", sims, "--overwrite"])["report"]
                exhaustive_runs[name, split] = (full, time.perf_counter() - started)
            full, exhaustive_seconds = exhaustive_runs[name, split]
            extra = ["--shortlist", checkpoints[first_stage]] if first_stage else []
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                two = run(base + ["--rerank_k", str(args.rerank_k), "--compare_sims", sims, *extra])["report"]
            two_seconds = time.perf_counter() - started
            cost = block(two)["two_stage"]
            rows.append({"layout": label, "model": name, "first_stage": first_stage or "own pooled features",
                         "exhaustive": {d: block(full)[d]["r1"] for d in ("i2t", "t2i")},
                         "two_stage": {d: block(two)[d]["r1"] for d in ("i2t", "t2i")},
                         "pairs_ratio": cost["exhaustive_pairs"] / cost["pairs_scored"],
                         "exhaustive_seconds": round(exhaustive_seconds, 1),
                         "two_stage_seconds": round(two_seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def quality_table(rows: list[dict]) -> str:
    lines = ["| split | model | first stage | R@1 i2t / t2i exhaustive | two-stage K=100 | head pairs | seconds "
             "exhaustive / two-stage |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        e, t = row["exhaustive"], row["two_stage"]
        lines.append(f"| {row['layout']} | {row['model']} | {row['first_stage']} | {e['i2t']:.1f} / {e['t2i']:.1f} | "
                     f"{t['i2t']:.1f} / {t['t2i']:.1f} | {row['pairs_ratio']:.0f}x fewer | "
                     f"{row['exhaustive_seconds']:.0f} / {row['two_stage_seconds']:.0f} "
                     f"({row['exhaustive_seconds'] / row['two_stage_seconds']:.0f}x) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    for name in ("scale", "quality"):
        part = sub.add_parser(name)
        part.add_argument("--rerank_k", type=int, default=100)
        part.add_argument("--work", default=None, help="scratch folder [the system's temp folder]")
        part.add_argument("--json", default=None, help="also write the rows here")
    sub.choices["quality"].add_argument("--layouts", nargs="+", choices=tuple(QUALITY_ROWS), default=list(QUALITY_ROWS))
    sub.choices["quality"].add_argument("--keep", default=None, help="train into and keep this folder; models "
                                                                     "already there are reused")
    sub.choices["scale"].add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    sub.choices["scale"].add_argument("--queries", type=int, default=20)
    sub.choices["scale"].add_argument("--threads", type=int, default=2)
    probe = sub.add_parser("_query")
    for option in ("--index", "--bert"):
        probe.add_argument(option, required=True)
    probe.add_argument("--queries", type=int, default=20)
    probe.add_argument("--rerank_k", type=int, default=100)
    probe.add_argument("--threads", type=int, default=2)
    probe.add_argument("--batch_size", type=int, default=256)
    probe.add_argument("--exhaustive", action="store_true")
    args = parser.parse_args()
    if args.part == "_query":
        query_process(args)
        return
    torch.set_num_threads(2)
    rows = scale(args) if args.part == "scale" else quality(args)
    print(scale_table(rows) if args.part == "scale" else quality_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
