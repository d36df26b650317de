"""The markdown of a GPU check report (bench/gpu/gpu_check.py): one table per section, one line for
every planned row, whatever happened to it."""

GIB = "GiB"


def fmt(value, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value).replace("|", "/").replace("\n", " ")


def cells(section: str, key: str) -> list[str]:
    """The leading cells that name a row in its table."""
    return [key] if section in ("pytest_cuda", "training", "eval_mem") or "/" not in key else key.split("/")


def state(row: dict) -> str:
    if row.get("status") == "ok":
        return "ok"
    detail = row.get("error") or row.get("reason") or ""
    return fmt(f"{row.get('status', '?')}: {detail}"[:200])


def table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(line) + " |" for line in lines]


def gemm_rates(report: dict) -> dict:
    rows = report["sections"].get("env", {}).get("rows", {})
    return {key.split("/")[1]: row["tflops"] for key, row in rows.items()
            if key.startswith("gemm/") and row.get("status") == "ok"}


def header(report: dict) -> list[str]:
    meta = report["meta"]
    versions = report["sections"].get("env", {}).get("rows", {}).get("versions", {})
    lines = ["# GPU check", ""]
    if meta.get("dry_run"):
        lines += ["**Dry run**: tiny sizes on the CPU, to keep the script working; its numbers mean nothing.", ""]
    peaks = meta["peak_tflops_assumed"]
    lines += [f"- started {meta['started_utc']} on {meta['host']}, {fmt(meta.get('elapsed_s'), '.0f')} s of a "
              f"{fmt(meta['budget_s'], '.0f')} s budget",
              f"- GPU: {fmt(versions.get('gpu'))} (compute capability {fmt(versions.get('capability'))}, "
              f"{fmt(versions.get('gpu_memory_gib'), '.0f')} GiB); nvidia-smi: {fmt(meta.get('nvidia_smi'))}; "
              f"query: {fmt(meta.get('gpu_query'))}",
              f"- python {fmt(versions.get('python'))}, torch {fmt(versions.get('torch'))} (CUDA "
              f"{fmt(versions.get('torch_cuda'))}, cuDNN {fmt(versions.get('cudnn'))}), transformers "
              f"{fmt(versions.get('transformers'))}, tokenizers {fmt(versions.get('tokenizers'))}, numpy "
              f"{fmt(versions.get('numpy'))}, ftfy {fmt(versions.get('ftfy'))}",
              f"- assumed peaks (TFLOP/s): fp32 {peaks['fp32']:.0f}, TF32 {peaks['tf32']:.0f}, bf16 "
              f"{peaks['bf16']:.0f} ({meta['peaks_source']})", ""]
    return lines


def section_lines(report: dict) -> list[str]:
    lines = [[name, fmt(s.get("status")), fmt(s.get("seconds"), ".1f"), fmt(s.get("limit_s"), ".0f"),
              fmt(s.get("estimate_s"), ".0f"), fmt((s.get("error") or "")[:200])]
             for name, s in report["sections"].items()]
    return ["## Sections", ""] + table(["section", "status", "s", "limit s", "estimate s", "error"], lines) + [""]


def rows_of(report: dict, section: str) -> list[tuple[str, dict]]:
    return list(report["sections"].get(section, {}).get("rows", {}).items())


def env_lines(report: dict) -> list[str]:
    lines = []
    for key, row in rows_of(report, "env"):
        if key == "versions":
            values = ", ".join(f"{k} {fmt(v)}" for k, v in row.items()
                               if k not in ("status", "row_s", "error", "reason"))
            lines.append(cells("env", key) + ["", fmt(values), "", "", "", state(row)])
        else:
            lines.append(cells("env", key) + [fmt(row.get("shape")), fmt(row.get("tflops"), ".1f"),
                                              fmt(row.get("peak_tflops"), ".0f"), fmt(row.get("pct_of_peak"), ".0f"),
                                              state(row)])
    return ["## Environment and measured GEMM rate", ""] + table(
        ["row", "precision", "versions / shape", "TFLOP/s", "assumed peak", "% of peak", "status"], lines) + [""]


def pytest_lines(report: dict) -> list[str]:
    lines = [cells("pytest_cuda", key) + [fmt(row.get("summary")), fmt(row.get("seconds"), ".1f"), state(row)]
             for key, row in rows_of(report, "pytest_cuda")]
    return ["## tests/test_cuda.py", ""] + table(["tests", "summary", "s", "status"], lines) + \
        ["", "Full output: pytest_cuda.txt.", ""]


def scoring_lines(report: dict) -> list[str]:
    gemm = gemm_rates(report)
    lines = []
    for section in ("scoring_f30k", "scoring_coco"):
        for key, row in rows_of(report, section):
            precision = key.split("/")[-1]
            of_gemm = 100 * row["tflops"] / gemm[precision] if "tflops" in row and precision in gemm else None
            target = f"{row['target']}: {fmt(row.get('target_met'))}" if "target" in row else "-"
            lines.append(cells(section, key) + [
                fmt(row.get("images"), "d") + " x " + fmt(row.get("captions"), "d"), fmt(row.get("seconds"), ".2f"),
                fmt(row.get("tflops"), ".1f"), fmt(row.get("pct_of_peak"), ".0f"), fmt(of_gemm, ".0f"),
                fmt(row.get("bound_s"), ".2f"), fmt(row.get("ratio_to_bound"), ".2f"), fmt(row.get("peak_gib"), ".1f"),
                fmt(row.get("rsum"), ".1f"), fmt(row.get("recall_unchanged")), target, state(row)])
    return ["## Evaluation scoring (evaluation.scoring.score_all on prepared items, default budget)", "",
            "Structured check set of bench/bench_scoring.py (random weights; ESL-H with identity level matrices), "
            "~12 tokens per caption. FLOP: X-Dim 2d^2 + 4Rd, ESL-H 2R x (sum of level widths) per (word, image). "
            "Bound = FLOP / assumed peak of the row's precision; `% GEMM` is against the measured GEMM rate. "
            "Recall@K = fp32: R@1/5/10 of both directions identical to the fp32 row's.", ""] + table(
        ["set", "head", "precision", "images x captions", "s", "TFLOP/s", "% peak", "% GEMM", "bound s", "x bound",
         f"peak {GIB}", "rSum", "Recall@K = fp32", "target", "status"], lines) + [""]


def encoding_lines(report: dict) -> list[str]:
    lines = [cells("encoding", key) + [fmt(row.get("batch"), "d"), fmt(row.get("items_per_s"), ".0f"),
                                       fmt(row.get("peak_gib"), ".2f"), fmt(row.get("attention")), state(row)]
             for key, row in rows_of(report, "encoding")]
    return ["## Encoders (BertTextEncoder captions/s, ClipEncoders.encode_images images/s; test.py's batch)", ""] + \
        table(["encoder", "precision", "batch", "items/s", f"peak {GIB}", "attention", "status"], lines) + [""]


def training_lines(report: dict) -> list[str]:
    lines = []
    for key, row in rows_of(report, "training"):
        head_peaks = f"{fmt(row.get('head_ours_peak_gib'))} / {fmt(row.get('head_loop_peak_gib'))}"
        status = state(row) + (f"; head-only: {fmt(row['head_error'])}" if row.get("head_error") else "")
        lines.append(cells("training", key) + [
            fmt(row.get("batch"), "d"), fmt(row.get("step_s"), ".3f"), fmt(row.get("pairs_per_s"), ".0f"),
            fmt(row.get("peak_gib"), ".2f"), fmt(row.get("head_ours_s"), ".3f"), fmt(row.get("head_loop_s"), ".3f"),
            fmt(row.get("head_speedup"), ".1f"), head_peaks, fmt(row.get("head_grad_diff"), ".1e"), status])
    return ["## One training step (training.step.OptimisationStep, recipe settings: fp32, no TF32)", "",
            "Step s: the best of the `timed_steps` after one warm-up step (bench_train's head steps likewise); "
            "peak: torch.cuda.max_memory_allocated over the timed steps.", "",
            "Beside it, bench/bench_train.py's head-only step (head forward, summed hinge, backward, AdamW) for ours "
            "and the released-style per-caption loop, at the same batch.", ""] + table(
        ["system", "batch", "step s", "pairs/s", f"peak {GIB}", "head ours s", "head loop s", "loop / ours",
         f"head peak ours / loop {GIB}", "grad diff (rel.)", "status"], lines) + [""]


def eval_mem_lines(report: dict) -> list[str]:
    lines = [cells("eval_mem", key) + [
        fmt(row.get("images"), "d") + " x " + fmt(row.get("captions"), "d"), fmt(row.get("budget_gib"), ".2f"),
        fmt(row.get("peak_over_items_gib"), ".3f"), fmt(row.get("peak_to_budget"), ".2f"),
        fmt(row.get("within_budget")),
        fmt(row.get("items_gib"), ".2f"), fmt(row.get("seconds"), ".2f"), state(row)]
        for key, row in rows_of(report, "eval_mem")]
    return ["## --eval_mem_gb (score_all with a small budget; max_memory_allocated above the prepared items)", ""] + \
        table(["head", "images x captions", f"budget {GIB}", f"peak {GIB}", "peak / budget", "within", f"items {GIB}",
               "s", "status"], lines) + [""]


def markdown(report: dict) -> str:
    parts = header(report) + section_lines(report) + env_lines(report) + pytest_lines(report) + \
        scoring_lines(report) + encoding_lines(report) + training_lines(report) + eval_mem_lines(report)
    return "\n".join(parts)
