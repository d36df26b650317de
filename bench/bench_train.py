"""Training-step speed of the local heads: ours against a released-style per-caption loop.

    python bench/bench_train.py                          # X-Dim, ESL-H, ESL-A at batch 32, 64, 128 (CPU: ~30 min)
    python bench/bench_train.py --heads xdim --batches 128 --device cuda

Two steps are timed for each head, batch and implementation, each in its own process, so that
its peak memory (RSS on CPU, max_memory_allocated on CUDA) is its own:

* the step train.py runs (training.step.OptimisationStep): the encoders (a 1-layer BERT of hidden
  size 32 and the region encoder on 36 x 2048 regions), the head, the summed hinge loss of the first
  epoch, backward, grad-norm clipping and AdamW over every parameter, for several consecutive steps
  on one batch: their median, their spread (slowest / fastest - 1) and the peak memory;
* the head alone: the head's forward pass on a batch of region and word features (standing for the
  encoders' outputs, with gradients), the same loss, the backward pass into the features and the
  head, AdamW on the head (the best of a few steps from the same state).

Ours and the loop start from the same weights on the same batch; the first step's losses and every
gradient are compared. Both run on the device as train.py resolves it (on the CPU: freed memory kept
in the process, see devices.keep_freed_cpu_memory). The step table ends with the machine's own
spread: a fixed GEMM of X-Dim's size timed as many times, as the floor of any step's spread.

X-Dim's intrinsic cost is the d x d dependency product for every (word, image) pair: a step
that backpropagates through it in the usual way costs 3 x 2 B W d^2 FLOP (forward, and twice
that in backward) for B images and W words in the batch, and that is the bound reported; the
released loop does twice that work (the dense diag(g) matmul, then D^T). Ours does two such
products per step (the forward's x D^T D and the backward's Gram matrix), so it can beat the
bound; "performed" is the rate on the work it does.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scoring import (  # noqa: E402
    esl_region_loop, features, gemm_rate, peak_rss, synchronize, timed, xdim_loop)
from config.options import config_from_saved  # noqa: E402
from devices import resolve_device  # noqa: E402
from modules.heads import ESLRegionHead, XDimHead  # noqa: E402
from modules.losses import HingeLoss, full_matrix_loss  # noqa: E402
from training.optimizers import build_optimizer  # noqa: E402
from training.step import OptimisationStep  # noqa: E402

HEADS = {"xdim": ("xdim", 1024), "esl_h": ("heuristic", 512), "esl_a": ("adaptive", 512)}


def build_head(name: str, device, dim: int | None = None):
    kind, default = HEADS[name]
    dim = dim or default
    torch.manual_seed(0)
    head = XDimHead(dim) if name == "xdim" else ESLRegionHead(dim, 2, 8, kind)
    return head.to(device), dim


def step(name: str, implementation: str, batch: int, regions: int, words: int, device, repeat: int = 3,
         dim: int | None = None) -> dict:
    """The best of `repeat` timed steps, each from the same state (after one untimed warm-up);
    the peak memory is that of one step above the process's memory before it. `dim`: the
    head's width (default: its released one)."""
    head, dim = build_head(name, device, dim)
    images, captions, lengths = features(batch, batch, regions, words, dim, device, structured=True)
    images.requires_grad_(True)
    captions.requires_grad_(True)
    loop = xdim_loop if name == "xdim" else esl_region_loop
    score = (lambda: loop(head, images, captions, lengths)) if implementation == "loop" else \
        (lambda: head(images, None, captions, lengths))
    criterion = HingeLoss(0.2, max_violation=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=1e-4)

    def run():
        optimizer.zero_grad(set_to_none=True)
        images.grad = captions.grad = None
        loss = full_matrix_loss(criterion, score())
        loss.backward()
        grads = [images.grad.clone(), captions.grad.clone()] + [p.grad.clone() for p in head.parameters()
                                                                 if p.grad is not None]
        optimizer.step()
        return float(loss), grads

    state = {k: v.clone() for k, v in head.state_dict().items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _current_rss()
    run()                                   # warm-up (allocator, kernels)
    seconds = float("inf")
    for _ in range(repeat):
        head.load_state_dict(state)
        optimizer.state.clear()
        synchronize(device)
        started = time.perf_counter()
        loss, grads = run()
        synchronize(device)
        seconds = min(seconds, time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        max(0, peak_rss() - rss_before)
    torch.save(grads, os.environ["BENCH_GRADS"])
    return {"seconds": seconds, "loss": loss, "peak_bytes": peak, "words": int(lengths.sum()), "dim": dim}


def real_step(name: str, implementation: str, batch: int, regions: int, words: int, device, repeat: int) -> dict:
    """`repeat` consecutive steps of training.step.OptimisationStep after one untimed warm-up, on
    one batch, with the head replaced by the released-style loop for `loop`."""
    # transformers and the model code (seconds to import): only the step scope's processes build a model
    from pairs import build_model
    _, dim = HEADS[name]
    cfg = config_from_saved({"encoders": "region_bert", "sim_head": name, "embed_size": dim, "img_dim": 2048,
                             "bert_path": os.environ["BENCH_BERT"], "batch_size": batch, "learning_rate": 5e-4,
                             "weight_decay": 1e-4, "adam_eps": 1e-8, "grad_clip": 2.0, "optimizer": "adamw",
                             "schedule": "step", "num_epochs": 30, "esl_levels": None if name == "xdim" else 8},
                            legacy=False)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if implementation == "loop":
        loop = xdim_loop if name == "xdim" else esl_region_loop
        model.head.forward = lambda images, image_lengths, captions, lengths: loop(model.head, images, captions,
                                                                                     lengths)
    optimizer = build_optimizer(cfg, model.optimizer_groups(cfg, cfg.learning_rate))
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    step = OptimisationStep(cfg, model, model, HingeLoss(0.2, max_violation=False), optimizer, scaler, device, 0,
                            10**6, lambda what: None)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(max(2, words // 2), words + words // 2 + 1, (batch,), generator=generator)
    ids = torch.zeros(batch, int(lengths.max()), dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        ids[row, :length] = torch.randint(5, 40, (length,), generator=generator)
    data = {"images": torch.rand(batch, regions, 2048, generator=generator), "image_lengths": None,
            "input_ids": ids, "lengths": lengths}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _current_rss()
    loss = step(data, 0)                                    # warm-up, and the step whose gradients are compared
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    seconds = []
    for number in range(repeat):
        synchronize(device)
        started = time.perf_counter()
        step(data, number + 1)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        max(0, peak_rss() - rss_before)
    torch.save(grads, os.environ["BENCH_GRADS"])
    seconds.sort()
    return {"seconds": seconds[len(seconds) // 2], "fastest": seconds[0], "slowest": seconds[-1], "loss": loss,
            "peak_bytes": peak, "steps": seconds}


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def grad_difference(ours: list, loop: list, floor: float = 0.0) -> float:
    """The largest difference of any gradient, relative to the loop's largest entry of it (or to
    `floor` times the largest entry of any gradient, where a gradient is only round-off: the first
    MLP bias under train-mode BatchNorm has an analytically zero gradient)."""
    largest = max(float(b.abs().max()) for b in loop)
    return max(float((a - b).abs().max()) / max(float(b.abs().max()), floor * largest, 1e-30)
               for a, b in zip(ours, loop))


def run_isolated(args, name, implementation, batch, grads_path, scope: str = "head") -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--one", name, implementation, str(batch),
               "--regions", str(args.regions), "--words", str(args.words), "--device", args.device,
               "--threads", str(torch.get_num_threads()), "--repeat", str(args.repeat), "--scope", scope]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "BENCH_GRADS": grads_path, "BENCH_BERT": args.bert or ""})
    if result.returncode:
        raise SystemExit(f"{name} {implementation} batch {batch} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--words", type=int, default=12, help="mean caption length (tokens)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--scope", default="both", choices=["both", "step", "head"],
                        help="the step train.py runs, the head alone, or both")
    parser.add_argument("--one", nargs=3, metavar=("HEAD", "IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)   # on the CPU: freed memory kept in the process, as in train.py
    if args.one:
        name, implementation, batch = args.one
        measure = real_step if args.scope == "step" else step
        print(json.dumps(measure(name, implementation, int(batch), args.regions, args.words, device, args.repeat)))
        return

    rate = gemm_rate(device, 1024)
    print(f"device {device}, {torch.get_num_threads()} threads; fp32 GEMM rate (8192 x 1024 x 1024): "
          f"{rate:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        if args.scope in ("both", "step"):
            # transformers (the tiny BERT): only the step scope needs it
            from demo.tiny_models import write_tiny_bert
            args.bert = write_tiny_bert(folder, ["a man rides a red bicycle down the street"], hidden=32, layers=1,
                                        heads=1)
            step_table(args, device)
        if args.scope in ("both", "head"):
            args.bert = None
            head_table(args, device, rate)


def step_table(args, device) -> None:
    print("\nThe step train.py runs (encoders, head, loss, backward, clip, AdamW):\n")
    print("| head | batch | ours: median (fastest-slowest) | released-style loop | speed-up | spread ours / loop | "
          "peak memory ours / loop | loss diff (rel.) | max grad diff (rel.) |")
    print("|---|---|---|---|---|---|---|---|---|")
    scratch = os.path.join(tempfile.gettempdir(), f"bench_train_{os.getpid()}")
    for name in args.heads:
        for batch in args.batches:
            ours = run_isolated(args, name, "ours", batch, scratch + "_ours.pt", "step")
            loop = run_isolated(args, name, "loop", batch, scratch + "_loop.pt", "step")
            grad_diff = grad_difference(torch.load(scratch + "_ours.pt"), torch.load(scratch + "_loop.pt"), 1e-3)
            spread = [f"{100 * (r['slowest'] / r['fastest'] - 1):.0f}%" for r in (ours, loop)]
            print(f"| {name} | {batch} | {ours['seconds']:.2f} s ({ours['fastest']:.2f}-{ours['slowest']:.2f}) | "
                  f"{loop['seconds']:.2f} s | {loop['seconds'] / ours['seconds']:.2f}x | {spread[0]} / {spread[1]} | "
                  f"{ours['peak_bytes'] / 2**30:.2f} / {loop['peak_bytes'] / 2**30:.2f} GiB | "
                  f"{abs(ours['loss'] - loop['loss']) / abs(loop['loss']):.1e} | {grad_diff:.1e} |", flush=True)
    for suffix in ("_ours.pt", "_loop.pt"):
        if os.path.exists(scratch + suffix):
            os.remove(scratch + suffix)
    trials, seconds, spread = machine_spread(device, 3 * args.repeat)
    print(f"\nThe machine's own spread: one fixed GEMM (196608 x 1024 x 1024, X-Dim's product at batch 128) "
          f"timed {trials} times in this run took {seconds:.2f} s at the median and spread {100 * spread:.0f}%; "
          f"no step can be steadier than that.")


def machine_spread(device, trials: int) -> tuple[int, float, float]:
    """The median seconds of a fixed 412-GFLOP GEMM and its spread (slowest / fastest - 1)."""
    a = torch.randn(196608, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    out = a @ b
    seconds = sorted(timed(lambda: torch.mm(a, b, out=out), device)[1] for _ in range(trials))
    return trials, seconds[trials // 2], seconds[-1] / seconds[0] - 1


def head_table(args, device, rate: float) -> None:
    print("\nThe head alone (forward, loss, backward into the features, AdamW on the head):\n")
    print("| head | batch | ours (best) | released-style loop | speed-up | ours / FLOP bound | ours performed GFLOP/s | "
          "peak memory ours / loop | loss diff (rel.) | max grad diff (rel.) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    scratch = os.path.join(tempfile.gettempdir(), f"bench_train_{os.getpid()}")
    for name in args.heads:
        for batch in args.batches:
            ours = run_isolated(args, name, "ours", batch, scratch + "_ours.pt")
            loop = run_isolated(args, name, "loop", batch, scratch + "_loop.pt")
            grad_diff = grad_difference(torch.load(scratch + "_ours.pt"), torch.load(scratch + "_loop.pt"))
            if name == "xdim":
                product = 2 * batch * ours["words"] * ours["dim"] ** 2
                bound_text = f"{ours['seconds'] / (3 * product / (rate * 1e9)):.2f}x"
                rate_text = f"{2 * product / ours['seconds'] / 1e9:.0f} ({200 * product / ours['seconds'] / 1e9 / rate:.0f}%)"
            else:
                bound_text = rate_text = "-"
            print(f"| {name} | {batch} | {ours['seconds']:.2f} s | {loop['seconds']:.2f} s | "
                  f"{loop['seconds'] / ours['seconds']:.1f}x | {bound_text} | {rate_text} | "
                  f"{ours['peak_bytes'] / 2**30:.2f} / {loop['peak_bytes'] / 2**30:.2f} GiB | "
                  f"{abs(ours['loss'] - loop['loss']) / abs(loop['loss']):.1e} | {grad_diff:.1e} |", flush=True)
    for suffix in ("_ours.pt", "_loop.pt"):
        if os.path.exists(scratch + suffix):
            os.remove(scratch + suffix)


if __name__ == "__main__":
    main()
