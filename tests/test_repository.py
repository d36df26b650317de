"""The repository's shape: the design card's top level, a `datasets` package that coexists with
HuggingFace `datasets`, checkpoints that name no code, and nothing that points outside the repo."""

import pytest
import os
import re
import subprocess
import sys

import torch

from conftest import REGION_DIM, ROOT

CARD = ["train.py", "test.py", "testall.py", "modules", "datasets", "config", "train_clip_based_f30k.sh",
        "train_clip_based_coco.sh", "train_region_f30k.sh", "train_region_coco.sh", "environment.yaml",
        "README.md", "tests"]


def test_top_level_matches_the_design_card():
    present = set(os.listdir(ROOT))
    assert set(CARD) <= present
    assert "dimmatch" not in present
    for package in ("modules", "datasets", "config", "evaluation", "training", "checkpoints", "devices", "outputs",
                    "cli"):
        assert os.path.isfile(os.path.join(ROOT, package, "__init__.py")), package


def test_nothing_points_outside_the_repository():
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.endswith((".py", ".md", ".sh", ".txt", ".yaml")) and name != "test_repository.py":
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    text = handle.read()
                if "../shared" in text or re.search(r"\bSPEC\b", text):
                    offenders.append(os.path.relpath(os.path.join(folder, name), ROOT))
    assert offenders == []


def fake_huggingface_datasets(site):
    """An installed 'datasets' distribution, as pip would leave HuggingFace's, whose import leaves a mark."""
    os.makedirs(site / "datasets")
    os.makedirs(site / "datasets-9.9.9.dist-info")
    (site / "datasets-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: datasets\n"
                                                                "Version: 9.9.9\n")
    (site / "datasets" / "__init__.py").write_text(
        f"open({str(site / 'imported')!r}, 'w').close()\nraise ImportError('HuggingFace datasets stand-in')\n")


@pytest.mark.slow
def test_huggingface_datasets_installed_beside_us_changes_nothing(tmp_path, region_data, tiny_bert):
    """Our `datasets` package wins for code run from the root; transformers still sees HF's
    distribution (it only checks the metadata) and none of what we import needs it."""
    site = tmp_path / "site"
    fake_huggingface_datasets(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import transformers.utils as u; "
             "import cli.commands, training.trainer, checkpoints.loading, evaluation.protocol, datasets; "
             "from torch.utils.tensorboard import SummaryWriter; "
             "print(u.is_datasets_available(), datasets.__file__)")
    result = subprocess.run([sys.executable, "-c", probe, ROOT], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    available, location = result.stdout.split()
    assert available == "True" and location == os.path.join(ROOT, "datasets", "__init__.py")
    out = tmp_path / "run"
    train = [sys.executable, os.path.join(ROOT, "train.py"), "--data_path", region_data[0], "--data_name",
             "f30k_precomp", "--bert_path", tiny_bert, "--img_dim", str(REGION_DIM), "--embed_size", "16",
             "--batch_size", "16", "--max_steps", "2", "--workers", "0", "--device", "cpu", "--output_dir", str(out)]
    assert subprocess.run(train, capture_output=True, env=env, cwd=str(tmp_path)).returncode == 0
    test = [sys.executable, os.path.join(ROOT, "test.py"), "--checkpoint", str(out / "checkpoint_last.pth"),
            "--workers", "0"]
    result = subprocess.run(test, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert result.returncode == 0 and "rSum" in result.stdout, result.stderr
    assert not (site / "imported").exists()


def test_checkpoints_name_no_code(tmp_path, region_data, tiny_bert):
    """Our checkpoints hold tensors and plain values only, so moving or renaming a package never
    breaks loading them (and torch's weights-only reader needs no allow-list)."""
    from conftest import run_cli
    from cli.commands import train
    out = tmp_path / "run"
    assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--embed_size", "16", "--batch_size", "16",
                           "--num_epochs", "1", "--workers", "0", "--device", "cpu",
                           "--output_dir", str(out)]) == 0
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(out / "checkpoint_last.pth")) == []
    assert (out / "model_best" / "model.safetensors").is_file()      # a model folder: no pickle at all
