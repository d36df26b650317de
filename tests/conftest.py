"""Shared fixtures: tiny backbones and small datasets written in the real on-disk formats."""

import hashlib
import os
import shutil
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from demo.data import write_image_dataset, write_region_dataset  # noqa: E402
from demo.tiny_models import write_tiny_bert, write_tiny_clip  # noqa: E402

REGION_DIM = 64


@pytest.fixture(scope="session")
def region_data(tmp_path_factory):
    """f30k_precomp-format data: (data_path, captions)."""
    root = str(tmp_path_factory.mktemp("region_data"))
    captions = write_region_dataset(root, {"train": 96, "dev": 10, "test": 10}, regions=8, dim=REGION_DIM, seed=1)
    return root, captions


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, region_data):
    folder = str(tmp_path_factory.mktemp("tiny_bert"))
    return write_tiny_bert(folder, region_data[1] + ["[extra] words for tests , . ' s"], hidden=32, layers=1)


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """Karpathy-JSON + JPEG data: (root with dataset_flickr30k.json, image folder, captions)."""
    root = str(tmp_path_factory.mktemp("image_data"))
    captions = write_image_dataset(root, {"train": 64, "val": 10, "test": 10}, image_size=48, seed=2)
    return root, os.path.join(root, "images"), captions


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory, image_data):
    folder = str(tmp_path_factory.mktemp("tiny_clip"))
    return write_tiny_clip(folder, image_data[2], width=64, layers=1, image_size=32, patch_size=16,
                           projection_dim=32)


@pytest.fixture
def float64():
    """Double precision, so that comparisons with the reference loops are tight."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def run_cli(main, argv):
    """Run a CLI main in-process; returns its exit status."""
    from cli.guard import run_guarded
    return run_guarded(main, argv)


def error_line(main, argv, capsys) -> str:
    """The one `error: ...` line a CLI main prints for a refused input (exit status 2)."""
    capsys.readouterr()
    assert run_cli(main, argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0][len("error: "):]


def train_short_region(out, region_data, tiny_bert, *extra):
    """A few training steps of a tiny region model (X-Dim, d=16 unless `extra` says otherwise);
    returns its checkpoint_last."""
    from cli.commands import train
    assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--embed_size", "16", "--batch_size", "16", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(out), *extra]) == 0
    return out / "checkpoint_last.pth"


@pytest.fixture(scope="session")
def short_clip_checkpoint(tmp_path_factory, image_data, tiny_clip):
    """Two training steps of a tiny ESL-CLIP model; returns its checkpoint_last."""
    from cli.commands import train
    root, images, _ = image_data
    out = tmp_path_factory.mktemp("short_clip") / "run"
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
                           "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "2", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(out)]) == 0
    return out / "checkpoint_last.pth"


@pytest.fixture(scope="session")
def short_region_checkpoint(tmp_path_factory, region_data, tiny_bert):
    return train_short_region(tmp_path_factory.mktemp("short_region") / "run", region_data, tiny_bert,
                              "--max_steps", "4")


def make_config(**values):
    """A complete config: the schema's defaults with `values` (as a released checkpoint's config is built)."""
    from config.options import config_from_saved
    return config_from_saved(values, legacy=False)


# ----------------------------------------------------------------------------- a finished run (test_inputs, test_tokenizers)

def tree_state(folder) -> dict:
    """Every file under `folder` with a hash of its content (empty when the folder is absent)."""
    state = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                state[os.path.relpath(path, folder)] = hashlib.sha1(handle.read()).hexdigest()
    return state


def train_args(data_path, bert, out, *extra):
    return ["--data_path", str(data_path), "--data_name", "f30k_precomp", "--bert_path", str(bert),
            "--img_dim", str(REGION_DIM), "--batch_size", "16", "--num_epochs", "1", "--workers", "0",
            "--embed_size", "16", "--sim_head", "esl_h", "--output_dir", str(out), "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, region_data, tiny_bert):
    """A run trained with a BERT folder that is deleted afterwards: (run folder, data path, rSum)."""
    root = tmp_path_factory.mktemp("trained")
    bert = root / "bert_copy"
    shutil.copytree(tiny_bert, bert)
    out = root / "run"
    from cli.commands import evaluate, train
    assert run_cli(train, train_args(region_data[0], bert, out)) == 0
    result = evaluate(["--checkpoint", str(out / "model_best"), "--data_path", region_data[0], "--workers", "0"])
    shutil.rmtree(bert)
    return out, region_data[0], result["report"]["rsum"]
