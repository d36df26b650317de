"""Cases a newcomer trial found: inputs that outputs may not replace, runs that never checkpointed,
--overwrite that fails early, resumes on other tokenizers or data, recipes that are not recipes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, error_line, run_cli
from cli.commands import evaluate, train
from test_trust import train_args, tree_state

TEST = (lambda argv: evaluate(argv, "test"))
TESTALL = (lambda argv: evaluate(argv, "testall", coco_testall=True))


def test_an_output_may_never_replace_the_evaluated_data(short_region_checkpoint, region_data, image_data, tiny_clip,
                                                        tmp_path, capsys):
    """Not even with --overwrite: the features, and the annotation file (by --save_ranks or by the
    .json that --save_sims writes beside its matrix)."""
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    features = data / "f30k_precomp" / "test_ims.npy"
    before = features.read_bytes()
    message = error_line(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", str(data),
                                "--workers", "0", "--save_sims", str(features), "--overwrite"], capsys)
    assert message == f"--save_sims {features} is an input (the data of split test {features}); write it elsewhere"
    assert features.read_bytes() == before
    root, images, _ = image_data
    clip = tmp_path / "clip"
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
                           "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "1", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(clip)]) == 0
    annotations = os.path.join(root, "dataset_flickr30k.json")
    base = ["--checkpoint", str(clip / "checkpoint_last.pth"), "--workers", "0", "--overwrite"]
    assert error_line(TEST, base + ["--save_ranks", annotations], capsys) == \
        f"--save_ranks {annotations} is an input (the data of split test {annotations}); write it elsewhere"
    sims = os.path.join(root, "dataset_flickr30k.npy")
    assert error_line(TEST, base + ["--save_sims", sims], capsys) == (
        f"{annotations} (written with --save_sims {sims}) is an input (the data of split test {annotations}); "
        "write it elsewhere")


def test_outputs_in_a_missing_folder_are_written_there(short_region_checkpoint, region_data, tmp_path):
    sims = tmp_path / "new" / "deeper" / "s.npy"
    ranks = tmp_path / "other" / "r.json"
    assert run_cli(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
                          "--save_sims", str(sims), "--save_ranks", str(ranks)]) == 0
    assert sims.is_file() and sims.with_suffix(".json").is_file() and ranks.is_file()


@pytest.mark.parametrize("options,key", [({"output_dir": "runs/x"}, "output_dir"), ({"resume": "auto"}, "resume"),
                                         ({"overwrite": True}, "overwrite"), ({"init_from": "x.pth"}, "init_from")])
def test_a_recipe_holds_no_option_of_the_run(tmp_path, capsys, options, key):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"description": "x", "base": "_region_f30k", "options": options}))
    assert error_line(train, ["--recipe", str(recipe), "--print_config"], capsys) == (
        f"recipe {recipe}: '{key}' is an option of the run, not of a recipe; give it on the command line")


def test_recipe_bases_are_found_next_to_the_recipe_and_named_in_errors(tmp_path, region_data, capsys):
    (tmp_path / "base.json").write_text(json.dumps({"description": "b", "base": "_region_f30k",
                                                    "options": {"margin": 0.3}}))
    (tmp_path / "child.json").write_text(json.dumps({"description": "c", "base": "base.json", "options": {}}))
    (tmp_path / "bad.json").write_text(json.dumps({"description": "c", "base": "_nope", "options": {}}))
    (tmp_path / "mixed.json").write_text(json.dumps({"description": "m", "base": "_region_f30k",
                                                     "options": {"encoders": "clip"}}))
    os.chdir(ROOT)
    capsys.readouterr()
    assert run_cli(train, ["--recipe", str(tmp_path / "child.json"), "--data_path", region_data[0],
                           "--print_config"]) == 0
    assert json.loads(capsys.readouterr().out)["margin"] == 0.3
    assert error_line(train, ["--recipe", str(tmp_path / "bad.json"), "--print_config"], capsys).startswith(
        f"recipe {tmp_path / 'bad.json'}: base _nope is not a recipe (choose ")
    assert error_line(train, ["--recipe", str(tmp_path / "mixed.json"), "--print_config"], capsys) == (
        f"recipe {tmp_path / 'mixed.json'} sets encoders clip over its base's region_bert: a recipe and its bases "
        "train one encoder pair")


def test_a_recipe_may_not_contradict_init_from(short_region_checkpoint, region_data, tmp_path, capsys):
    message = error_line(train, ["--recipe", "esl_h_region_f30k", "--data_path", region_data[0], "--init_from",
                                 str(short_region_checkpoint), "--output_dir", str(tmp_path / "o")], capsys)
    assert message.startswith(f"--recipe esl_h_region_f30k sets sim_head esl_h, but --init_from "
                              f"{short_region_checkpoint} has sim_head xdim")


def test_a_run_that_never_checkpointed_starts_again_with_resume_auto(tmp_path, region_data, tiny_bert, capsys):
    """Killed (or failed) before its first checkpoint: the folder holds config.json and train.log
    only, and --resume auto (what a requeued job runs) starts it afresh; a model_best without a
    checkpoint_last is refused, and files of the user's are left alone."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "train.log").write_text("an earlier start\n")
    (out / "notes.txt").write_text("mine")
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "2", "--resume", "auto")) == 0
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 2
    assert "an earlier start" not in (out / "train.log").read_text() and (out / "notes.txt").read_text() == "mine"
    assert not (out / ".previous-run").exists()
    os.remove(out / "checkpoint_last.pth")
    (out / "model_best").mkdir()
    assert error_line(train, train_args(region_data[0], tiny_bert, out, "--resume", "auto"), capsys) == (
        f"--resume auto: {out} holds model_best but no checkpoint_last.pth, so there is nothing to resume; keep "
        "the run and start elsewhere, or replace it with --overwrite")


def test_an_overwrite_that_fails_before_its_first_checkpoint_gives_the_run_back(tmp_path, region_data, tiny_bert,
                                                                                capsys):
    out = tmp_path / "run"
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "3")) == 0
    before = tree_state(out)
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    features = np.load(data / "f30k_precomp" / "train_ims.npy")
    features[:] = np.nan                       # found at the first batch, after the start's checks
    np.save(data / "f30k_precomp" / "train_ims.npy", features)
    message = error_line(train, train_args(data, tiny_bert, out, "--overwrite"), capsys)
    assert "NaN or infinite values" in message
    assert {k: v for k, v in tree_state(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_a_resume_on_another_tokenizer_or_other_data_is_refused(tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "3")) == 0
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_bert, swapped)
    vocab = (swapped / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab[10], vocab[11] = vocab[11], vocab[10]
    (swapped / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    message = error_line(train, ["--output_dir", str(out), "--resume", "auto", "--bert_path", str(swapped)], capsys)
    assert message.startswith(f"the tokenizer of --bert_path {swapped} maps 2 of ")
    data = tmp_path / "shuffled"
    shutil.copytree(region_data[0], data)
    caps = data / "f30k_precomp" / "train_caps.txt"
    lines = caps.read_text().splitlines()
    lines[0], lines[7] = lines[7], lines[0]
    caps.write_text("\n".join(lines) + "\n")
    assert error_line(train, ["--output_dir", str(out), "--resume", "auto", "--data_path", str(data)], capsys) == (
        f"--resume {out / 'checkpoint_last.pth'}: the training data differ from the run's (captions_sha256); give "
        "the data it was started with")
    shutil.rmtree(tiny_bert + "_gone", ignore_errors=True)


def test_a_run_resumes_from_another_folder_without_its_backbone_folder(tmp_path, region_data, tiny_bert):
    """Paths are saved absolute, and the checkpoint carries its tokenizer and architecture."""
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    out = tmp_path / "run"
    relative = os.path.relpath(bert, ROOT)
    assert run_cli(train, train_args(os.path.relpath(region_data[0], ROOT), relative, os.path.relpath(out, ROOT),
                                     "--max_steps", "2")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bert_path"] == str(bert) and config["data_path"] == region_data[0]
    shutil.rmtree(bert)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--output_dir", str(out), "--resume",
                             "auto", "--max_steps", "4"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 4


def test_resume_of_another_folders_checkpoint_is_refused(short_region_checkpoint, tmp_path, capsys):
    message = error_line(train, ["--output_dir", str(tmp_path / "new"), "--resume", str(short_region_checkpoint)],
                         capsys)
    assert message.startswith(f"--resume {short_region_checkpoint} continues the run in "
                              f"{short_region_checkpoint.parent}, not in --output_dir {tmp_path / 'new'}")


@pytest.mark.parametrize("content", [b"a caption\nanother\n", b"{\"a\": 1}", os.urandom(300)])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    assert error_line(TEST, ["--checkpoint", str(path)], capsys).startswith(f"checkpoint {path} cannot be read")
    message = error_line(train, ["--output_dir", str(tmp_path), "--resume", str(path)], capsys)
    assert message.startswith(f"checkpoint {path} cannot be read") and "weights_only=False" not in message


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


def test_make_demo_data_checks_its_options_and_keeps_what_is_there(tmp_path, capsys):
    from tools.make_demo_data import main
    assert error_line(main, [str(tmp_path / "d"), "--train_images", "-5"], capsys) == \
        "--train_images must be at least 1 (got -5)"
    (tmp_path / "afile").write_text("x")
    assert error_line(main, [str(tmp_path / "afile")], capsys) == f"--output {tmp_path / 'afile'} is a file; give a folder"
    assert error_line(main, [str(tmp_path / "d"), "--train_image", "10"], capsys).startswith("unrecognized arguments")
    (tmp_path / "d" / "regions").mkdir(parents=True)
    assert error_line(main, [str(tmp_path / "d"), "--train_images", "10", "--test_images", "5"], capsys) == (
        f"{tmp_path / 'd'} already holds regions; give --overwrite to replace them, or another folder")
    assert not os.listdir(tmp_path / "d" / "regions")


def test_retrieve_refuses_empty_queries_and_caption_files(short_region_checkpoint, region_data, tmp_path, capsys):
    from tools.retrieve import main
    index = tmp_path / "x.index"
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                          f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device", "cpu"]) == 0
    assert error_line(main, ["text", "--index", str(index), "--query", " "], capsys) == \
        "--query must be a caption (got an empty one)"
    (tmp_path / "empty.txt").write_text("")
    assert error_line(main, ["image", "--index", str(index), "--captions", str(tmp_path / "empty.txt"), "--item",
                             "0"], capsys) == f"--captions {tmp_path / 'empty.txt'} holds no captions (one caption a line)"
