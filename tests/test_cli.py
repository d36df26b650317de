"""train.py / test.py / testall.py end to end on tiny generated data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REGION_DIM, ROOT, error_line, run_cli
from cli.commands import evaluate, train

TEST = (lambda argv: evaluate(argv, "test"))
TESTALL = (lambda argv: evaluate(argv, "testall", coco_testall=True))


def region_train_args(region_data, tiny_bert, output_dir, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
            "--img_dim", str(REGION_DIM), "--batch_size", "16", "--num_epochs", "1", "--workers", "0",
            "--output_dir", str(output_dir), "--device", "cpu", *extra]


def test_train_then_test_region_xdim(tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    assert run_cli(train, region_train_args(region_data, tiny_bert, out, "--embed_size", "32")) == 0
    for name in ("config.json", "checkpoint_last.pth", "model_best/model.safetensors", "train.log",
                 "best_metrics.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["sim_head"] == "xdim" and config["embed_size"] == 32 and config["lr_update"] == 15
    capsys.readouterr()
    sims_path = tmp_path / "sims.npy"
    assert run_cli(lambda argv: evaluate(argv, "test"),
                   ["--checkpoint", str(out / "model_best"), "--data_path", region_data[0],
                    "--workers", "0", "--save_sims", str(sims_path)]) == 0
    printed = capsys.readouterr().out
    assert "Image to text: R@1" in printed and "rSum" in printed
    assert np.load(sims_path).shape == (10, 50)
    saved = json.loads((tmp_path / "sims.json").read_text())
    assert saved["info"]["images_encoded"] == 10 and saved["info"]["captions_encoded"] == 50
    assert 0 <= saved["metrics"]["rsum"] <= 600


def test_testall_reports_five_folds_and_the_full_set(tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    assert run_cli(train, region_train_args(region_data, tiny_bert, out, "--sim_head", "esl_a",
                                            "--embed_size", "16", "--max_steps", "2")) == 0
    capsys.readouterr()
    assert run_cli(lambda argv: evaluate(argv, "testall", coco_testall=True),
                   ["--checkpoint", str(out / "checkpoint_last.pth"), "--split", "test", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "mean of 5 folds of 2 images" in printed and "full 10 images" in printed


def test_clip_train_then_test(tmp_path, image_data, tiny_clip, capsys):
    root, images, _ = image_data
    out = tmp_path / "clip"
    args = ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
            "--clip_path", tiny_clip, "--batch_size", "16", "--num_epochs", "1", "--workers", "0",
            "--output_dir", str(out), "--device", "cpu"]
    assert run_cli(train, args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["sim_head"], config["embed_size"], config["evals_per_epoch"], config["schedule"]) == \
        ("esl_h", 32, 4, "cosine")
    capsys.readouterr()
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(out / "model_best"),
                                                         "--workers", "0"]) == 0
    assert "test: 10 images, 50 captions" in capsys.readouterr().out


@pytest.mark.slow
def test_entry_point_scripts_print_one_line_errors(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--checkpoint", str(tmp_path / "nope.pth")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pth'} does not exist"


def test_options_that_do_not_apply_are_refused(short_region_checkpoint, region_data, tmp_path, capsys):
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0"]
    assert error_line(TEST, base + ["--ids_file", str(tmp_path / "ids.txt")], capsys) == \
        "--ids_file names the COCO ids of the rows for --extended: give --extended too"
    assert error_line(TEST, base + ["--clip_truncation", "keep_eot"], capsys) == (
        f"--clip_truncation applies to clip models (CLIP image and text towers); {short_region_checkpoint} is a "
        "region_bert model")
    message = error_line(TESTALL, base + ["--split", "test", "--extended"], capsys)
    assert message.startswith("--extended adds ECCV Caption and CxC, which annotate MS-COCO's 5K test images")
    assert error_line(TEST, base + ["--eval_batch_size", "0"], capsys) == "--eval_batch_size must be at least 1 (got 0)"
    assert error_line(TEST, base + ["--workers", "-2"], capsys) == "--workers must be at least 0 (got -2)"


def test_small_folds_are_said_to_be_no_coco_1k(short_region_checkpoint, region_data, capsys):
    capsys.readouterr()
    assert run_cli(TESTALL, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0],
                             "--workers", "0", "--split", "test"]) == 0
    assert "note: folds of 2 images, not COCO's 1,000" in capsys.readouterr().out
