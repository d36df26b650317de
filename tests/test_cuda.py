"""CUDA paths, run where a GPU is present and skipped elsewhere (CI has none): training steps
in fp32 / fp16 (grad scaler) / bf16, CPU and CUDA scores agreeing, a CUDA checkpoint read on the
CPU, and --eval_mem_gb bounding the scoring memory it promises."""

import numpy as np
import pytest
import torch

from conftest import REGION_DIM, run_cli
from cli.commands import evaluate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TEST = (lambda argv: evaluate(argv, "test"))


def region_train(region_data, tiny_bert, out, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
            "--img_dim", str(REGION_DIM), "--embed_size", "32", "--batch_size", "16", "--workers", "0",
            "--output_dir", str(out), "--device", "cuda", *extra]


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory, region_data, tiny_bert):
    out = tmp_path_factory.mktemp("cuda") / "run"
    assert run_cli(train, region_train(region_data, tiny_bert, out, "--num_epochs", "1")) == 0
    return out


@pytest.mark.parametrize("amp", ["off", "fp16", "bf16"])
@pytest.mark.parametrize("head", ["xdim", "esl_h"])
def test_training_steps_on_cuda(tmp_path, region_data, tiny_bert, amp, head):
    out = tmp_path / "run"
    assert run_cli(train, region_train(region_data, tiny_bert, out, "--sim_head", head, "--amp", amp,
                                       "--max_steps", "4")) == 0
    saved = torch.load(out / "checkpoint_last.pth", weights_only=True, map_location="cpu")
    assert saved["progress"]["global_step"] == 4
    assert all(torch.isfinite(value).all() for value in saved["model"].values() if value.is_floating_point())
    assert saved["scaler"] is not None


def test_cpu_and_cuda_scores_agree_and_cuda_checkpoints_load_on_cpu(cuda_run, region_data, tmp_path):
    matrices = {}
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.npy"
        assert run_cli(TEST, ["--checkpoint", str(cuda_run / "model_best"), "--data_path", region_data[0],
                              "--workers", "0", "--device", device, "--save_sims", str(path)]) == 0
        matrices[device] = np.load(path)
    scale = np.abs(matrices["cpu"]).max()
    assert np.abs(matrices["cuda"] - matrices["cpu"]).max() <= 1e-4 * scale


def test_eval_mem_gb_bounds_the_scoring_memory():
    from evaluation.scoring import EncodedItems, score_all
    from modules.heads import XDimHead
    device = torch.device("cuda")
    torch.manual_seed(0)
    head = XDimHead(256).to(device)
    images = torch.nn.functional.normalize(torch.randn(200, 36, 256), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(1000, 20, 256), dim=-1)
    lengths = torch.randint(5, 21, (1000,))
    image_items = EncodedItems.from_padded(images, torch.full((200,), 36))
    caption_items = EncodedItems.from_padded(captions, lengths)
    budget_gb = 0.05
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    score_all(head, image_items, caption_items, device, mem_gb=budget_gb, progress=False)
    peak = torch.cuda.max_memory_allocated() - before
    # the promise covers the shard's intermediates; the prepared items may be moved to the GPU as well
    assert peak <= budget_gb * 2**30 + image_items.nbytes + caption_items.nbytes + 16 * 2**20
