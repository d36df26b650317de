"""Training-step speed of the local heads: ours against a released-style per-caption loop.

    python bench/bench_train.py                          # X-Dim, ESL-H, ESL-A at batch 32, 64, 128 (CPU: ~15 min)
    python bench/bench_train.py --heads xdim --batches 128 --device cuda

One step is what the head costs a training step: the forward pass of the head on a batch of
region and word features (standing for the encoders' outputs, with gradients), the summed hinge
loss of the first epoch, the backward pass into the features and the head, and an AdamW update
of the head. Both implementations start from the same weights on the same batch; the losses and
every gradient are compared. Each configuration runs in its own process, so that its peak
memory (RSS on CPU, max_memory_allocated on CUDA) is its own.

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
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_scoring import esl_region_loop, features, gemm_rate, synchronize, xdim_loop  # noqa: E402
from modules.heads import ESLRegionHead, XDimHead  # noqa: E402
from modules.losses import HingeLoss, full_matrix_loss  # noqa: E402

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
        max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before)
    torch.save(grads, os.environ["BENCH_GRADS"])
    return {"seconds": seconds, "loss": loss, "peak_bytes": peak, "words": int(lengths.sum()), "dim": dim}


def _current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def grad_difference(ours: list, loop: list) -> float:
    """The largest difference of any gradient, relative to the loop's largest entry of it."""
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(ours, loop))


def run_isolated(args, name, implementation, batch, grads_path) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--one", name, implementation, str(batch),
               "--regions", str(args.regions), "--words", str(args.words), "--device", args.device,
               "--threads", str(torch.get_num_threads()), "--repeat", str(args.repeat)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "BENCH_GRADS": grads_path})
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
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per configuration (the best counts)")
    parser.add_argument("--one", nargs=3, metavar=("HEAD", "IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.one:
        name, implementation, batch = args.one
        print(json.dumps(step(name, implementation, int(batch), args.regions, args.words, device, args.repeat)))
        return

    rate = gemm_rate(device, 1024)
    print(f"device {device}, {torch.get_num_threads()} threads; fp32 GEMM rate (8192 x 1024 x 1024): "
          f"{rate:.0f} GFLOP/s")
    print("| head | batch | ours | released-style loop | speed-up | ours / FLOP bound | ours performed GFLOP/s | "
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
