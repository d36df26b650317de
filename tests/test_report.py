"""tools/report.py: one self-contained page with the Recall@K curve, the learned dimensions and
qualitative results, failures first."""

import os
import re
import shutil
import subprocess

import numpy as np

from conftest import run_cli
from cli.commands import evaluate, train
from evaluation.metrics import retrieval_metrics


def report(argv):
    from tools.report import main
    return main(argv)


def test_region_report_from_saved_scores(short_region_checkpoint, region_data, tmp_path):
    sims_path = tmp_path / "sims.npy"
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(short_region_checkpoint), "--data_path",
                                                         region_data[0], "--workers", "0",
                                                         "--save_sims", str(sims_path)]) == 0
    page = open(report(["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--sims", str(sims_path),
                        "--out", str(tmp_path / "out"), "--queries", "5", "--device", "cpu"]), encoding="utf-8").read()
    assert {"index.html", "recall_at_k.png", "dimensions.png"} <= set(os.listdir(tmp_path / "out"))
    assert "X-Dim: D is 16 x 16" in page and page.count('<img class="figure" src="data:image/png;base64,') == 2
    assert page.count("<tr>") == 10                      # 5 caption queries and 5 image queries
    sims = np.load(sims_path)
    ranks = [int(r) for r in re.findall(r"rank of its image: (\d+)", page)]
    assert ranks == sorted(ranks, key=lambda r: (r == 1, -r))          # failures first, the worst first
    assert f"rSum {retrieval_metrics(sims)['rsum']:.1f}" in page


def test_clip_report_shows_thumbnails_and_esl_levels(tmp_path, image_data, tiny_clip):
    root, images, _ = image_data
    out = tmp_path / "clip"
    assert run_cli(train, ["--encoders", "clip", "--sim_head", "esl_a", "--dataset", "f30k", "--image_root", images,
                           "--ann_path", root, "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "1",
                           "--workers", "0", "--device", "cpu", "--output_dir", str(out)]) == 0
    target = report(["--checkpoint", str(out / "checkpoint_last.pth"), "--out", str(tmp_path / "page"),
                     "--device", "cpu"])
    page = open(target, encoding="utf-8").read()
    assert page.count('src="data:image/jpeg;base64,') >= 40 and "ESL (adaptive)" in page
    chromium = shutil.which("chromium")
    if chromium:                       # where a browser is installed, the page renders
        shot = tmp_path / "page.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                        f"--screenshot={shot}", f"file://{target}"], capture_output=True, timeout=120)
        assert shot.stat().st_size > 50_000


def test_saved_scores_of_another_split_are_refused(short_region_checkpoint, region_data, tmp_path, capsys):
    from cli.guard import run_guarded
    np.save(tmp_path / "wrong.npy", np.zeros((3, 15), np.float32))
    capsys.readouterr()
    assert run_guarded(report, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--sims",
                                str(tmp_path / "wrong.npy"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'wrong.npy'} is 3 x 15, but split 'test' has "
                                               "10 images and 50 captions")


def test_a_two_stage_report(short_region_checkpoint, region_data, tmp_path):
    """--rerank_k: the page shows the re-ranked shortlists; with K covering every item it is the
    exhaustive page."""
    common = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--device", "cpu"]
    exhaustive = open(report(common + ["--out", str(tmp_path / "all")]), encoding="utf-8").read()
    two_stage = open(report(common + ["--out", str(tmp_path / "two"), "--rerank_k", "50"]), encoding="utf-8").read()
    assert "two-stage, K = 50: 500 of 500 pairs scored" in two_stage
    strip = (lambda text: re.sub(r"<h1>.*?</h1>|<title>.*?</title>|data:image/png;base64,[^\"]+", "", text))
    assert strip(two_stage) == strip(exhaustive)
    short = open(report(common + ["--out", str(tmp_path / "short"), "--rerank_k", "2"]), encoding="utf-8").read()
    assert "two-stage, K = 2:" in short and short.count("<li ") <= 8 * 2
