"""bench/gpu_check.sh, the prepared GPU check: its dry run (tiny sizes on the CPU) fills every row
of the table, a crashed section or a failed row leaves the others measured, and a budget that
runs out still writes the whole table, every row saying why it did not run."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))

import gpu_check  # noqa: E402
from gpu_check_report import cells  # noqa: E402
from gpu_plan import PLANNED  # noqa: E402


def run_check(out, *args, env=None, script=False, status=0):
    command = (["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), *args, str(out)] if script else
               [sys.executable, os.path.join(ROOT, "bench", "gpu", "gpu_check.py"), "--out", str(out), *args])
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=240)
    assert result.returncode == status, result.stdout[-2000:] + result.stderr[-2000:]
    with open(out / "gpu_check.json", encoding="utf-8") as handle:
        report = json.load(handle)
    return report, (out / "gpu_check.md").read_text(encoding="utf-8")


def assert_every_row(report, markdown):
    """Every planned row is in the JSON with a status and has its line in the markdown."""
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name, keys in PLANNED.items():
        rows = report["sections"][name]["rows"]
        assert list(rows)[:len(keys)] == keys
        for key in keys:
            assert rows[key]["status"], (name, key)
            line = "| " + " | ".join(cells(name, key)) + " |"
            assert line in markdown, (name, key)


def test_every_planned_section_is_measured():
    import gpu_sections
    assert list(gpu_check.SECTIONS) == list(PLANNED)
    assert set(gpu_sections.SECTIONS) == set(PLANNED) - {"pytest_cuda"}
    assert tuple(gpu_sections.RECIPES) == tuple(PLANNED["training"])


def test_a_spent_budget_still_writes_the_whole_table(tmp_path):
    report, markdown = run_check(tmp_path, "--budget", "5", "--dry-run", status=1)
    assert_every_row(report, markdown)
    for section in report["sections"].values():
        assert section["status"] == "skipped" and section["error"].startswith("out of time")
        assert all(row["status"] == "not run" for row in section["rows"].values())


def test_a_crashed_section_and_a_failed_row_leave_the_others_measured(tmp_path):
    report, markdown = run_check(tmp_path, "--sections", "env,eval_mem", "--dry-run",
                                 env={"GPU_CHECK_FAIL": "env,eval_mem/xdim"}, status=1)
    assert_every_row(report, markdown)
    sections = report["sections"]
    assert sections["env"]["status"] == "error" and sections["env"]["exit_status"] == 70
    assert all(row["status"] == "not run" for row in sections["env"]["rows"].values())
    assert sections["eval_mem"]["status"] == "ok"
    assert sections["eval_mem"]["rows"]["xdim"]["status"] == "error"
    assert "GPU_CHECK_FAIL" in sections["eval_mem"]["rows"]["xdim"]["error"]
    assert sections["eval_mem"]["rows"]["esl_h"]["status"] == "ok"
    assert sections["scoring_coco"]["status"] == "not selected"


@pytest.mark.slow
def test_the_dry_run_fills_every_row(tmp_path):
    out = tmp_path / "out"
    report, markdown = run_check(out, "--dry-run", script=True)
    assert_every_row(report, markdown)
    assert report["meta"]["dry_run"] and "Dry run" in markdown
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("log_tail"))
        assert all(row["status"] == "ok" for row in section["rows"].values()), name
    sections = report["sections"]
    pytest_row = sections["pytest_cuda"]["rows"]["tests/test_cuda.py"]
    if not torch.cuda.is_available():
        assert pytest_row["skipped"] > 0 and "failed" not in pytest_row
    for key, row in {**sections["scoring_f30k"]["rows"], **sections["scoring_coco"]["rows"]}.items():
        assert row["seconds"] > 0 and row["flop"] > 0 and row["ratio_to_bound"] > 0, key
        assert (row["recall_unchanged"] is None) == key.endswith("fp32"), key
    assert "target" in sections["scoring_coco"]["rows"]["coco/xdim/fp32"]
    assert all(row["items_per_s"] > 0 for row in sections["encoding"]["rows"].values())
    for key, row in sections["training"]["rows"].items():
        assert row["step_s"] > 0 and row["pairs_per_s"] > 0, key
        assert ("head_loop_s" in row) == (key != "esl_h_clip") and "head_error" not in row, key
    assert all(row["seconds"] > 0 for row in sections["eval_mem"]["rows"].values())
    # what comes back from the GPU machine: at most 8 files, plainly named
    names = sorted(os.listdir(out))
    assert names == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "nvidia-smi.txt", "pytest_cuda.txt"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)
