"""Self-contained checkpoints: they evaluate from any folder, offline, without their backbone folder;
a tokenizer that does not fit the model is refused before anything is scored; hub names of
backbones fail at once offline."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, error_line, run_cli, train_args
from cli.commands import evaluate, train
from demo.tiny_models import write_tiny_bert

TEST = (lambda argv: evaluate(argv, "test"))


# ----------------------------------------------------------------------------- checkpoints and tokenizers

@pytest.mark.slow
def test_a_checkpoint_evaluates_from_any_folder_offline_without_its_bert_folder(trained, tmp_path):
    out, data, rsum = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--checkpoint",
                             os.path.relpath(out / "model_best", elsewhere), "--data_path",
                             os.path.relpath(data, elsewhere), "--workers", "0"],
                            cwd=elsewhere, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert f"rSum {rsum:.1f}" in result.stdout
    assert "checkpoint " in result.stdout and "epoch 0, step 30 of 30 (global step 30), validation rSum" in result.stdout


def test_a_tokenizer_that_does_not_fit_fails_before_scoring(trained, tmp_path, capsys):
    out, data, _ = trained
    other = write_tiny_bert(str(tmp_path / "other_bert"), ["completely different words here"], hidden=32, layers=1)
    args = ["--checkpoint", str(out / "model_best"), "--data_path", data, "--workers", "0", "--bert_path", other]
    ours = len(open(os.path.join(other, "vocab.txt"), encoding="utf-8").read().split())
    message = error_line(TEST, args, capsys)
    assert message.startswith(f"the tokenizer of --bert_path {other} has {ours} tokens but the model's embedding "
                              "table has ") and message.endswith("it is not the tokenizer this model was trained with")


def test_a_tokenizer_of_the_right_size_but_other_ids_fails(trained, tmp_path, tiny_bert, capsys):
    out, data, _ = trained
    swapped = tmp_path / "swapped_bert"
    shutil.copytree(tiny_bert, swapped)
    vocab = (swapped / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab[10], vocab[11] = vocab[11], vocab[10]
    (swapped / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    message = error_line(TEST, ["--checkpoint", str(out / "model_best"), "--data_path", data, "--workers", "0",
                                "--bert_path", str(swapped)], capsys)
    total = len([token for token in vocab if token])
    assert message == (f"the tokenizer of --bert_path {swapped} maps 2 of {total} tokens to other ids than the "
                       "checkpoint's own tokenizer")


def test_an_old_checkpoint_without_tokenizer_names_what_is_missing(trained, tmp_path, capsys):
    out, data, _ = trained
    payload = torch.load(out / "checkpoint_last.pth", weights_only=True)
    del payload["tokenizer"]
    payload["version"] = 1
    payload["config"]["bert_path"] = "runs/tiny_bert"
    old = tmp_path / "format1.pth"
    torch.save(payload, old)
    message = error_line(TEST, ["--checkpoint", str(old), "--data_path", data, "--workers", "0"], capsys)
    assert message == (f"checkpoint {old} carries no tokenizer, and the one it names is not found: --bert_path "
                       f"runs/tiny_bert is neither a folder here ({os.getcwd()}) nor in the HuggingFace cache, and "
                       "HF_HUB_OFFLINE is set: give a local copy (--bert_path DIR, a folder written by "
                       "save_pretrained), or download it once online")


def test_a_folder_without_tokenizer_files_is_refused(tmp_path, region_data, tiny_bert, capsys):
    folder = tmp_path / "no_vocab"
    shutil.copytree(tiny_bert, folder)
    os.remove(folder / "vocab.txt")
    out = tmp_path / "out"
    message = error_line(train, train_args(region_data[0], folder, out), capsys)
    assert message == f"--bert_path {folder} has no BERT tokenizer files (vocab.txt or tokenizer.json)"
    assert not out.exists()


def hub_error(tmp_path, extra_env):
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty_cache"), **extra_env}
    for key in [key for key in extra_env if extra_env[key] is None]:
        env.pop(key)
        env.pop("TRANSFORMERS_OFFLINE", None)
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--data_path", str(tmp_path), "--data_name",
               "f30k_precomp", "--bert_path", "bert-base-uncased", "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    return result.stderr.strip()


@pytest.mark.slow
def test_hub_names_fail_at_once_offline_or_unreachable(tmp_path):
    offline = hub_error(tmp_path, {"HF_HUB_OFFLINE": "1"})
    where = f"error: --bert_path bert-base-uncased is neither a folder here ({ROOT}) nor in the HuggingFace cache"
    assert offline == (f"{where}, and HF_HUB_OFFLINE is set: give a local copy (--bert_path DIR, a folder "
                       "written by save_pretrained), or download it once online")
    unreachable = hub_error(tmp_path, {"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.startswith(f"{where}, and http://127.0.0.1:9 cannot be reached (")
    assert unreachable.endswith("): give a local copy (--bert_path DIR, a folder written by save_pretrained)")


def test_one_resolution_serves_evaluation_and_resume(tiny_bert, tmp_path):
    """datasets.captions.checkpoint_tokenizer, which evaluation, --init_from and resume all call: the
    checkpoint's own copy unless a folder is given; a given folder is checked against it and used
    (evaluation) or only checked (resume: `keep_own`); without a copy the named folder must be found."""
    from datasets.captions import checkpoint_tokenizer, load_tokenizer, tokenizer_snapshot
    from errors import ConfigError
    own = load_tokenizer("bert", tiny_bert)
    snapshot = tokenizer_snapshot(own, "bert")
    tokens = {"rows": len(own), "pad": own.pad_token_id}
    carried = checkpoint_tokenizer("bert", "bert_path", snapshot, tokens, "checkpoint c.pth")
    assert carried is not own and carried.get_vocab() == own.get_vocab()
    given = checkpoint_tokenizer("bert", "bert_path", snapshot, tokens, "checkpoint c.pth", given=tiny_bert)
    assert given.name_or_path == tiny_bert
    kept = checkpoint_tokenizer("bert", "bert_path", snapshot, tokens, "checkpoint c.pth", given=tiny_bert,
                                keep_own=True)
    assert kept.name_or_path != tiny_bert and kept.get_vocab() == own.get_vocab()
    named = checkpoint_tokenizer("bert", "bert_path", None, tokens, "checkpoint c.pth", named=tiny_bert)
    assert named.name_or_path == tiny_bert
    missing = str(tmp_path / "gone")
    with pytest.raises(ConfigError) as caught:
        checkpoint_tokenizer("bert", "bert_path", None, tokens, "checkpoint c.pth", named=missing)
    assert str(caught.value) == (f"checkpoint c.pth carries no tokenizer, and the one it names is not found: "
                                 f"--bert_path {missing}: no such folder (relative paths are read from {os.getcwd()})")
    with pytest.raises(ConfigError) as caught:
        checkpoint_tokenizer("bert", "bert_path", None, tokens, "checkpoint c.pth", given=missing)
    assert str(caught.value).startswith(f"--bert_path {missing}: no such folder")
    with pytest.raises(ConfigError, match="the tokenizer of checkpoint c.pth has"):
        checkpoint_tokenizer("bert", "bert_path", snapshot, {**tokens, "rows": len(own) + 1}, "checkpoint c.pth")
