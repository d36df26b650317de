"""Whole-process `test.py` time per system at real model size, and where it goes.

For each system a model of the published size with random weights (X-Dim and ESL-H region: BERT-base
on 36 x 2048 regions, d = 1024 / 512; ESL-CLIP: ViT-B/16) is trained for one step by `train.py` on
data written in the real on-disk formats (region .npy + captions; Karpathy JSON + 500 x 375 JPEGs),
with vocabularies of the real sizes. Then `test.py` evaluates N images x 5N captions twice:
as its own process (the wall time a user waits, imports included), and in this process with every
phase timed by wrapping the functions that do it (reading and hashing files, building the model and
its backbone, loading the weights, encoding, scoring). Nothing is downloaded.

    python bench/bench_eval.py                      # 100 images x 500 captions, 2 threads
    python bench/bench_eval.py --systems esl_clip --images 200
"""

import argparse
import contextlib
import functools
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel  # noqa: E402

import evaluation.protocol  # noqa: E402,F401  (timed_phases wraps the phase functions it holds too)
from bench_scoring import gemm_rate, peak_rss  # noqa: E402
from checkpoints import native  # noqa: E402
from checkpoints.loading import load_model, read_checkpoint_config  # noqa: E402
from cli.commands import evaluate  # noqa: E402
from demo.data import write_image_dataset, write_region_dataset  # noqa: E402
from demo.tiny_models import CLIP_END, CLIP_START, write_bert_vocab, write_clip_vocab  # noqa: E402
from pairs import build_model  # noqa: E402

SYSTEMS = {  # recipe, encoders
    "xdim": ("xdim_region_f30k", "region"),
    "esl_h_region": ("esl_h_region_f30k", "region"),
    "esl_clip": ("esl_h_clip_f30k", "clip"),
}
# The timed phases: (module, function, label). Nested phases (a backbone inside the model) are
# reported on their own line as well as inside their parent.
PHASES = [
    ("checkpoints.native", "read_file", "read checkpoint (torch.load)"),
    ("provenance", "file_sha256", "sha256 of checkpoint and data files"),
    ("pairs", "load_eval_split", "read and check the split"),
    ("pairs", "build_model", "build the model"),
    ("modules.clip_encoder", "build_clip", "  of which building the backbone"),
    ("modules.text_encoder", "build_bert", "  of which building the backbone"),
    ("checkpoints.native", "load_weights", "load the weights"),
    ("evaluation.scoring", "encode_items", "encode images and captions"),
    ("evaluation.scoring", "score_all", "score every pair"),
]
BERT_BASE_VOCAB = 30522
CLIP_VOCAB = 49408


def pad_bert_vocab(folder: str) -> int:
    """Fill vocab.txt to bert-base-uncased's 30,522 entries with [unusedN] pieces, as its own vocabulary
    has, so that the embedding (and the checkpoint) has the real size."""
    path = os.path.join(folder, "vocab.txt")
    tokens = open(path, encoding="utf-8").read().split("\n")[:-1]
    tokens += [f"[unused{n}]" for n in range(BERT_BASE_VOCAB - len(tokens))]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(tokens) + "\n")
    return len(tokens)


def write_bert_base(folder: str, captions) -> None:
    write_bert_vocab(captions, folder)
    rows = pad_bert_vocab(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=rows, pad_token_id=0), add_pooling_layer=False).save_pretrained(folder)


def write_clip_b16(folder: str, captions) -> None:
    """A ViT-B/16 CLIP of OpenAI's shapes (49,408 tokens; the end token the largest id) with random weights."""
    vocab = write_clip_vocab(captions, folder)
    symbols = [symbol for symbol in vocab if symbol not in (CLIP_START, CLIP_END)]
    symbols += [f"unusedpad{n}</w>" for n in range(CLIP_VOCAB - 2 - len(symbols))]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump({symbol: index for index, symbol in enumerate(symbols + [CLIP_START, CLIP_END])}, handle)
    config = CLIPConfig(
        projection_dim=512,
        text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=CLIP_VOCAB - 2, eos_token_id=2, pad_token_id=CLIP_VOCAB - 1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, hidden_act="quick_gelu"))
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)


def prepare(system: str, n_images: int, work: str) -> str:
    """Data, backbone and a one-step checkpoint of `system` under `work`; returns the checkpoint."""
    recipe, encoders = SYSTEMS[system]
    data, backbone, run = (os.path.join(work, name) for name in ("data", "backbone", "run"))
    if encoders == "region":
        captions = write_region_dataset(data, {"train": 8, "dev": 5, "test": n_images}, regions=36, dim=2048, seed=0)
        write_bert_base(backbone, captions)
        inputs = ["--data_path", data, "--bert_path", backbone]
    else:
        # the images of Flickr30K are about 500 x 375 JPEGs: decoding and resizing cost what they cost there
        captions = write_image_dataset(data, {"train": 8, "val": 5, "test": n_images}, image_size=500, seed=0)
        write_clip_b16(backbone, captions)
        inputs = ["--image_root", os.path.join(data, "images"), "--ann_path", data, "--clip_path", backbone]
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--recipe", recipe, *inputs, "--output_dir", run,
                    "--max_steps", "1", "--batch_size", "4", "--workers", "0", "--device", "cpu"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.join(run, "checkpoint_last.pth")


def evict_from_page_cache(path: str) -> None:
    """A user's first evaluation reads the checkpoint from disk, not from the page cache."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def whole_process(checkpoint: str, threads: int) -> dict:
    """`python test.py` as a user runs it, the checkpoint not cached: wall seconds, and the encode /
    score seconds it logs."""
    evict_from_page_cache(checkpoint)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--checkpoint", checkpoint,
                             "--device", "cpu"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"test.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    logged = re.search(r"\(([\d.]+)s\), scored \d+x\d+ in ([\d.]+)s", result.stderr + result.stdout)
    return {"seconds": seconds, "encode": float(logged.group(1)), "score": float(logged.group(2))}


@contextlib.contextmanager
def timed_phases(totals: dict):
    """Wrap every PHASES function, wherever a module holds it, to add its seconds to `totals`."""
    patched = []
    for module_name, name, label in PHASES:
        original = getattr(importlib.import_module(module_name), name)

        @functools.wraps(original)
        def wrapper(*args, _original=original, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - started

        for module in list(sys.modules.values()):
            if getattr(module, name, None) is original:
                patched.append((module, name, original))
                setattr(module, name, wrapper)
    try:
        yield
    finally:
        for module, name, original in reversed(patched):
            setattr(module, name, original)


class FlopCount(TorchDispatchMode):
    """FLOPs of the matmuls, convolutions and attention, without the module tracker of
    FlopCounterMode (which fails under inference_mode). Under inference_mode linear and
    scaled_dot_product_attention reach the mode undecomposed, so they are counted here."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.linear.default:
            inputs, weight = args[0], args[1]
            self.total += 2 * inputs.numel() // inputs.shape[-1] * weight.numel()
        elif func is torch.ops.aten.scaled_dot_product_attention.default:
            query, key, value = args[:3]
            self.total += 2 * query.numel() * key.shape[-2] + 2 * query.numel() // query.shape[-1] * value.numel() \
                // value.shape[:-2].numel()
        elif func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out_val=out)
        return out


def in_process(checkpoint: str) -> dict:
    """The same evaluation as `test.py`, in this process, phase by phase (modules already imported,
    the checkpoint not cached)."""
    totals = {}
    counter = FlopCount()
    evict_from_page_cache(checkpoint)
    with timed_phases(totals), counter, contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        evaluate(["--checkpoint", checkpoint, "--device", "cpu"], "test")
        totals["total"] = time.perf_counter() - started
    totals["flop"] = counter.total
    return totals


def load_process(checkpoint: str, how: str) -> None:
    """Load the model of a (not cached) checkpoint as test.py does (`ours`: the file memory-mapped,
    the backbone not randomly initialised) or the usual way (`usual`: torch.load of the whole file,
    the model built with its random initialisation, then the weights loaded); prints seconds and
    this process's peak RSS."""
    read = read_checkpoint_config(checkpoint, argparse.Namespace())   # imports and tokenizer, not timed
    del read
    evict_from_page_cache(checkpoint)
    before = peak_rss()
    started = time.perf_counter()
    if how == "ours":
        load_model(read_checkpoint_config(checkpoint, argparse.Namespace()))
    else:
        payload = native.read_file(checkpoint)
        model = build_model(read_checkpoint_config(checkpoint, argparse.Namespace()).cfg,
                            backbone_config=payload["backbone_config"])
        native.load_weights(model, payload["model"], checkpoint)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_gib": (peak_rss() - before) / 2**30}))


def loading(checkpoint: str) -> dict:
    """Ours and the usual loading, each in a fresh process from a cold checkpoint."""
    result = {}
    for how in ("usual", "ours"):
        output = subprocess.run([sys.executable, os.path.abspath(__file__), "--load", checkpoint, "--how", how],
                                capture_output=True, text=True, check=True).stdout
        result[how] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--load", help=argparse.SUPPRESS)        # the loading probe's own process
    parser.add_argument("--how", choices=("ours", "usual"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load_process(args.load, args.how)
        return
    torch.set_num_threads(args.threads)
    rate = gemm_rate(torch.device("cpu"), 1024)
    print(f"fp32 GEMM rate of this machine now (8192 x 1024 x 1024): {rate:.0f} GFLOP/s")
    results = {"gemm_gflops": rate}
    for system in args.systems:
        with tempfile.TemporaryDirectory() as work:
            checkpoint = prepare(system, args.images, work)
            size = os.path.getsize(checkpoint) / 2**20
            whole = whole_process(checkpoint, args.threads)
            phases = in_process(checkpoint)
            loads = loading(checkpoint)
        results[system] = {"checkpoint_mib": size, "whole_process": whole, "in_process": phases, "loading": loads}
        print(f"\n{system}: {args.images} images x {5 * args.images} captions, checkpoint {size:.0f} MiB, "
              f"{args.threads} threads")
        print(f"  test.py, whole process            {whole['seconds']:7.2f} s  (logged: encode {whole['encode']:.2f} s,"
              f" score {whole['score']:.2f} s; imports and start-up {whole['seconds'] - phases['total']:.2f} s)")
        print(f"  evaluate() in process             {phases['total']:7.2f} s")
        work = phases["encode images and captions"] + phases["score every pair"]
        print(f"    encoding and scoring do {phases['flop'] / 1e12:.2f} TFLOP at {phases['flop'] / work / 1e9:.0f} "
              f"GFLOP/s, {100 * phases['flop'] / work / 1e9 / rate:.0f}% of the GEMM rate")
        for label in dict.fromkeys(label for _, _, label in PHASES):
            if label in phases:
                print(f"    {label:<34}{phases[label]:7.2f} s")
        accounted = sum(seconds for label, seconds in phases.items() if label not in ("total", "flop")
                        and not label.startswith(" "))
        print(f"    {'the rest (metrics, reports)':<34}{phases['total'] - accounted:7.2f} s")
        print(f"  loading the model from the cold checkpoint: {loads['ours']['seconds']:.2f} s, peak +"
              f"{loads['ours']['peak_gib']:.2f} GiB; the usual way (whole torch.load, random init, load): "
              f"{loads['usual']['seconds']:.2f} s, +{loads['usual']['peak_gib']:.2f} GiB")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
