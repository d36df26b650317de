"""The prepared GPU check (issue 23): nvidia-smi, versions, tests/test_cuda.py and the GPU table
(evaluation scoring, encoder throughput, one training step per system, --eval_mem_gb), written
to OUT/gpu_check.json and OUT/gpu_check.md. Run it through bench/gpu_check.sh.

    python bench/gpu/gpu_check.py --out OUT [--budget 440] [--sections a,b] [--dry-run]

Each section runs in its own process (bench/gpu/gpu_sections.py, or pytest) under its own time limit,
cut so that the sections after it keep their minimum; one that crashes, hangs or runs out of
memory leaves the others running. A section that no longer fits the budget is skipped. The table
lists every planned row with its values, its error, or why it did not run, and is rewritten
after every section. This process imports no torch, so it reports even when torch cannot start.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))

from gpu_check_report import markdown  # noqa: E402
from gpu_plan import PEAK_TFLOPS, PEAKS_SOURCE, PLANNED  # noqa: E402

# name: (time limit s, minimum s to start it, estimate s on an H200). Estimates, from FLOP counts
# at realistic rates (H200 SXM: 67 TFLOP/s fp32, 495 TF32, 990 bf16 dense; 4.8 TB/s), plus ~6 s of
# process start (torch, transformers, CUDA context) per section:
# env           ~10 s  versions; 3 x 7 timings of three 65536x1024 @ 1024x1024 products (9 TFLOP) < 1 s
# pytest_cuda   ~60 s  8 tiny train / test runs of tests/test_cuda.py and its fixtures
# scoring_f30k  ~20 s  X-Dim 1K x 5K = 1.35e14 FLOP: fp32 2.0 s at the bound, TF32 / bf16 < 1 s;
#                      ESL-H (4.4e12 GEMM FLOP, elementwise-bound) < 1 s each; CPU features ~2 s
# encoding      ~30 s  random init of BERT-base and ViT-B/16 CLIP on the CPU ~5 s; 4 rows of ~2 s
#                      of batches after a warm-up
# training      ~45 s  3 model builds ~10 s; 3 x 4 full steps (BERT-base at 128 x 12 tokens ~1
#                      TFLOP, ViT-B/16 at 64 images ~7 TFLOP, forward and backward: < 0.3 s each);
#                      bench_train head steps ours / loop x 4 (X-Dim bound 1.2 TFLOP; loop < 0.5 s)
# eval_mem      ~15 s  two 1K x 5K scorings in 1 GiB blocks (X-Dim ~3 s at fp32)
# scoring_coco ~150 s  X-Dim 5K x 25K = 3.37e15 FLOP: fp32 50 s at the bound (65 s at 1.3x), TF32
#                      bound 6.8 s plus ~40 TB of elementwise passes (~9 s), bf16 ~5-10 s; ESL-H
#                      ~15 s for three precisions; CPU features ~10 s; Recall on 5K x 25K ~0.5 s x 6
# nvidia-smi ~2 s. Total ~330 s (5.5 min); the default budget is 440 s, and gpu_check.sh stops this
# process 15 s after it at the latest, so the whole call stays under 8 minutes.
SECTIONS = {
    "env": (60, 20, 10),
    "pytest_cuda": (150, 60, 60),
    "scoring_f30k": (90, 30, 20),
    "encoding": (75, 25, 30),
    "training": (100, 30, 45),
    "eval_mem": (45, 15, 15),
    "scoring_coco": (270, 120, 150),
}
RESERVE_S = 10          # kept for writing the table at the end
KILL_GRACE_S = 5
DRY_MINIMUM_S = 5       # a dry run's sections take seconds: the H200 minimums would not fit its budget
STARTED = time.monotonic()


class Check:
    """The report (JSON) being filled, written after every section."""

    def __init__(self, out: str, args):
        self.out, self.args = out, args
        self.started = STARTED
        self.log = open(os.path.join(out, "gpu_check.log"), "a", encoding="utf-8")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.report = {"meta": {"started_utc": started, "host": platform.node(), "python": sys.version.split()[0],
                                "dry_run": args.dry_run, "budget_s": args.budget, "command": " ".join(sys.argv),
                                "peak_tflops_assumed": PEAK_TFLOPS, "peaks_source": PEAKS_SOURCE},
                       "sections": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def write(self) -> None:
        self.report["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        texts = {"gpu_check.json": json.dumps(self.report, indent=1, default=str),
                 "gpu_check.md": markdown(self.report)}
        for name, text in texts.items():
            path = os.path.join(self.out, name)
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
            os.replace(path + ".tmp", path)


class Stopped(Exception):
    """SIGTERM (gpu_check.sh's last-resort timeout) or Ctrl-C: the table is written with what finished."""


def stop(signum, frame):
    raise Stopped(f"stopped by signal {signum} after {time.monotonic() - STARTED:.0f} s")


def run_limited(command: list[str], limit: float, stdout) -> tuple[int | None, float]:
    """(exit status, or None when killed at `limit`; seconds). The command runs in a process group
    of its own (not a new session), which is ended with it, also when this process is stopped."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, process_group=0)
    try:
        return process.wait(timeout=max(1.0, limit)), time.monotonic() - started
    except subprocess.TimeoutExpired:
        end_group(process, (signal.SIGTERM, signal.SIGKILL))
        return None, time.monotonic() - started
    except BaseException:  # stopped: no grace, gpu_check.sh's SIGKILL follows in 5 s
        end_group(process, (signal.SIGKILL,))
        raise


def end_group(process, signals) -> None:
    for sig in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(path: str, start: int, chars: int = 1500) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        handle.seek(start)
        return handle.read()[-chars:]


def nvidia_smi(check: Check) -> None:
    """nvidia-smi and a query of the GPU's name, driver and limits (read-only), to nvidia-smi.txt."""
    path = os.path.join(check.out, "nvidia-smi.txt")
    meta = check.report["meta"]
    if shutil.which("nvidia-smi") is None:
        meta["nvidia_smi"] = "not found"
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("nvidia-smi: not found on this machine\n")
        return
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
             "--format=csv"]
    with open(path, "w", encoding="utf-8") as handle:
        statuses = [run_limited(command, 20, handle)[0] for command in (["nvidia-smi"], query)]
    meta["nvidia_smi"] = "ok" if statuses == [0, 0] else f"exit statuses {statuses}"
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().strip().splitlines()
    if statuses[1] == 0 and lines:
        meta["gpu_query"] = lines[-1]


def pytest_summary(path: str) -> dict:
    """The counts of pytest's closing line (`3 passed, 5 skipped in 40.2s`)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip("= \n") for line in handle if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    summary = lines[-1] if lines else ""
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)",
                                                                summary)}
    return {"summary": summary, **counts}


def run_pytest(check: Check, limit: float) -> dict:
    path = os.path.join(check.out, "pytest_cuda.txt")
    with open(path, "w", encoding="utf-8") as handle:
        status, seconds = run_limited([sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], limit, handle)
    row = {**pytest_summary(path), "exit_status": status, "seconds": seconds, "output": "pytest_cuda.txt"}
    row["status"] = "ok" if status == 0 else ("timeout" if status is None else "error")
    if status is None:
        row["error"] = f"killed at its limit of {limit:.0f} s"
    elif status:
        row["error"] = f"pytest exit status {status}: {row['summary'] or 'no summary line'}"
    return {"status": row["status"], "seconds": seconds, "error": row.get("error"), "rows": {"tests/test_cuda.py": row}}


def run_measured(check: Check, name: str, limit: float, scratch: str) -> dict:
    """One bench/gpu/gpu_sections.py section in its own process; rows it did not finish are marked."""
    result = os.path.join(scratch, name + ".json")
    command = [sys.executable, os.path.join(ROOT, "bench", "gpu", "gpu_sections.py"), name, result]
    command += ["--dry-run"] if check.args.dry_run else []
    start = os.path.getsize(check.log.name)
    status, seconds = run_limited(command, limit, check.log)
    section = {"seconds": seconds, "exit_status": status, "rows": read_json(result, {}).get("rows", {})}
    if status == 0:
        section["status"] = "ok"
        return section
    section["status"] = "timeout" if status is None else "error"
    error = read_text(result + ".error")
    section["error"] = (f"killed at its limit of {limit:.0f} s" if status is None else
                        error or f"the section's process exited with status {status}")
    section["log_tail"] = log_tail(check.log.name, start)
    return section


def read_json(path: str, default):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def fill_missing(section: dict, name: str, reason: str) -> None:
    rows = section.setdefault("rows", {})
    for key in PLANNED[name]:
        rows.setdefault(key, {"status": "not run", "reason": reason})
    section["rows"] = {key: rows[key] for key in PLANNED[name]} | {k: v for k, v in rows.items()
                                                                   if k not in PLANNED[name]}


def minimum_s(check: Check, name: str) -> float:
    return DRY_MINIMUM_S if check.args.dry_run else SECTIONS[name][1]


def section_limit(check: Check, name: str, order: list[str]) -> float:
    """Its own limit, cut so that every later selected section keeps its minimum; when too little
    is left for that, its own minimum if that fits (earlier sections go first)."""
    left = check.args.budget - check.elapsed() - RESERVE_S
    later = sum(minimum_s(check, n) for n in order[order.index(name) + 1:])
    return max(min(SECTIONS[name][0], left - later), min(minimum_s(check, name), left))


def skip_reason(check: Check, name: str, order: list[str], no_gpu, stopped):
    """(status, reason) of a section that is not run, or None to run it."""
    if name not in order:
        return "not selected", None
    if stopped or (no_gpu and name != "pytest_cuda"):
        return "skipped", stopped or no_gpu
    minimum = minimum_s(check, name)
    if section_limit(check, name, order) < minimum:
        left = check.args.budget - check.elapsed()
        return "skipped", (f"out of time: {left:.0f} s of the {check.args.budget:.0f} s budget left, this section "
                           f"needs {minimum:.0f} s")
    return None


def run_section(check: Check, name: str, order: list[str], scratch: str) -> dict:
    limit, estimate = section_limit(check, name, order), SECTIONS[name][2]
    check.say(f"{name}: starting (limit {limit:.0f} s, estimate {estimate} s on an H200)")
    check.log.write(f"===== {name} =====\n")
    check.log.flush()
    try:
        section = run_pytest(check, limit) if name == "pytest_cuda" else run_measured(check, name, limit, scratch)
    except Stopped as exc:
        result = read_json(os.path.join(scratch, name + ".json"), {})
        section = {"status": "stopped", "error": str(exc), "rows": result.get("rows", {})}
    section.update(limit_s=round(limit, 1), estimate_s=estimate)
    return section


def run_sections(check: Check, order: list[str]) -> None:
    scratch = tempfile.mkdtemp(prefix="gpu_check_")
    no_gpu = stopped = None
    try:
        for name in SECTIONS:
            skipped = skip_reason(check, name, order, no_gpu, stopped)
            if skipped is None:
                section = run_section(check, name, order, scratch)
            else:
                section = {"status": skipped[0], "error": skipped[1]}
            fill_missing(section, name, section.get("error") or section["status"])
            check.report["sections"][name] = section
            seconds = f" ({section['seconds']:.1f} s)" if "seconds" in section else ""
            check.say(f"{name}: {section['status']}{seconds}" + (f": {section['error']}" if section.get("error")
                                                                 else ""))
            stopped = stopped or (section["error"] if section["status"] == "stopped" else None)
            if name == "env" and not check.args.dry_run:
                no_gpu = no_gpu_reason(section)
            check.write()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def no_gpu_reason(env: dict) -> str | None:
    versions = env["rows"].get("versions", {})
    if versions.get("status") == "ok" and not versions.get("cuda_available"):
        return "torch sees no CUDA GPU (bench/gpu_check.sh --dry-run runs the tiny CPU version)"
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json / .md / .log, nvidia-smi.txt, "
                                                     "pytest_cuda.txt")
    parser.add_argument("--budget", type=float, default=440.0, help="seconds for the whole check (default 440)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, e.g. for a rerun")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (the test suite's run)")
    args = parser.parse_args(argv)
    selected = [name for name in args.sections.split(",") if name]
    unknown = sorted(set(selected) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    os.makedirs(args.out, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    check = Check(args.out, args)
    check.say(f"GPU check{' (dry run)' if args.dry_run else ''}: budget {args.budget:.0f} s, output in {args.out}")
    try:
        nvidia_smi(check)
    except Stopped as exc:
        check.report["meta"]["nvidia_smi"] = str(exc)
    check.write()
    run_sections(check, [name for name in SECTIONS if name in selected])
    check.write()
    print(markdown(check.report), flush=True)
    # 0: every selected section ran to its end (its rows may still hold errors); 1: one did not
    return int(any(s["status"] not in ("ok", "not selected") for s in check.report["sections"].values()))


if __name__ == "__main__":
    sys.exit(main())
