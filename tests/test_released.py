"""The authors' released checkpoint formats, rebuilt at a tiny size with the exact key names,
loaded through test.py and checked against a direct computation from the same tensors."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel

import reference as ref
from conftest import REGION_DIM, ROOT, run_cli
from cli.commands import evaluate
from datasets.captions import load_tokenizer
from datasets.transforms import clip_preprocess
from datasets.karpathy import load_karpathy_split
from datasets.precomp import PrecompSplit

D = 16          # joint size of the tiny region systems
LEVELS = 4      # 16 / 2**4 = 1
CLIP_WIDTH, CLIP_EMBED, CLIP_LEVELS = 64, 32, 5


def randn(*shape, scale=0.3):
    return torch.randn(*shape) * scale


def with_prefix(state, prefix="module."):
    return {prefix + key: value for key, value in state.items()}


def released_region_image():
    hidden = D // 2
    return {"fc.weight": randn(D, REGION_DIM), "fc.bias": randn(D), "mlp.layers.0.weight": randn(hidden, REGION_DIM),
            "mlp.layers.0.bias": randn(hidden), "mlp.layers.1.weight": randn(D, hidden), "mlp.layers.1.bias": randn(D),
            "mlp.bns.0.weight": 1 + randn(hidden), "mlp.bns.0.bias": randn(hidden),
            "mlp.bns.0.running_mean": randn(hidden), "mlp.bns.0.running_var": 1 + randn(hidden).abs(),
            "mlp.bns.0.num_batches_tracked": torch.tensor(100), "mlp.bns.1.weight": randn(D),
            "mlp.bns.1.bias": randn(D), "mlp.bns.1.running_mean": randn(D), "mlp.bns.1.running_var": randn(D).abs(),
            "mlp.bns.1.num_batches_tracked": torch.tensor(100)}


def released_region_text(tiny_bert):
    config = BertConfig.from_pretrained(tiny_bert)
    bert = BertModel(config)  # with the pooler, as bert-base-uncased checkpoints of 2021
    state = {"bert." + key: value for key, value in bert.state_dict().items()}
    state["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    state.update({"linear.weight": randn(D, config.hidden_size), "linear.bias": randn(D)})
    return state


def released_xdim_head():
    return {"weights.weight": torch.randn(D, D), "sim_eval.weight": randn(1, D),
            "temp_scale.weight": torch.full((1, 1), float(np.log(1 / 0.07))),
            "sim_map.weight": 2.5 + 0.1 * torch.randn(1, D), "temp_learnable.weight": torch.full((1, 1), 1.5)}


def widths(d, levels):
    return [d // 2 ** level for level in range(levels + 1)]


def released_esl_levels(prefix, strategy, d, levels):
    state = {}
    for side, short in (("image", "img"), ("text", "txt")):
        for level in range(1, levels + 1):
            if strategy == "heuristic":
                state[f"{prefix}{side}_levels.kernel_{short}_{level}.weight"] = randn(4, 1, 2, scale=0.7)
            else:
                w = widths(d, levels)
                state[f"{prefix}{side}_levels.masks_{level}.weight"] = torch.randn(w[level], w[level - 1])
    return state


def released_esl_region_head(strategy):
    state = released_esl_levels("plus_encoder.encoders_1.", strategy, D, LEVELS)
    sims = "sims.calculator_1."
    state.update({sims + "sim_eval.weight": 0.1 + randn(1, LEVELS + 1, scale=0.05),
                  sims + "temp_scale.weight": torch.full((1, 1), float(np.log(1 / 0.07))),
                  sims + "temp_scale_1.weight": torch.full((1, 1), 0.2),
                  sims + "temp_scale_2.weight": torch.full((1, 1), 2.5)})
    for level, n in enumerate(widths(D, LEVELS)):
        state[f"{sims}masks_{level}.weight"] = torch.randn(n, n)
        state[f"{sims}lynorm_{level}.weight"] = 1 + randn(n, n, scale=0.1)
        state[f"{sims}lynorm_{level}.bias"] = randn(n, n, scale=0.1)
    return state


def save_region_release(path, image, text, head):
    opt = argparse.Namespace(data_name="f30k_precomp", data_path="../Flickr30K/", embed_size=D, kernel_size=2,
                             precomp_enc_type="basic", img_dim=REGION_DIM, max_violation=True)
    torch.save({"model": [with_prefix(image), with_prefix(text), with_prefix(head)], "opt": opt, "epoch": 25,
                "best_rsum": 528.2, "Eiters": 12345}, path)


def direct_region_inputs(region_data, tiny_bert, image, text):
    """Region and word features computed straight from the released tensors."""
    split = PrecompSplit(region_data[0], "f30k_precomp", "test", REGION_DIM)
    regions = torch.stack([split.features(i) for i in range(split.num_images)])
    image_features = ref.region_encoder(image, regions)
    bert = BertModel(BertConfig.from_pretrained(tiny_bert), add_pooling_layer=False).eval()
    bert.load_state_dict({k[len("bert."):]: v for k, v in text.items()
                          if k.startswith("bert.") and "pooler" not in k and "position_ids" not in k})
    tokenizer = load_tokenizer("bert", tiny_bert)
    words = []
    with torch.no_grad():
        for caption in split.captions:
            ids = torch.tensor([tokenizer(caption)["input_ids"]])
            hidden = bert(ids).last_hidden_state[0]
            words.append(ref.l2n(hidden @ text["linear.weight"].t() + text["linear.bias"]))
    return image_features, words


def evaluate_file(path, *options):
    sims_path = os.path.splitext(str(path))[0] + "_sims.npy"
    assert run_cli(lambda argv: evaluate(argv, "test"),
                   ["--checkpoint", str(path), "--workers", "0", "--save_sims", sims_path, "--overwrite", *options]) == 0
    return np.load(sims_path)


def test_xdim_release_loads_and_scores_like_the_released_formula(tmp_path, region_data, tiny_bert):
    torch.manual_seed(0)
    image, text, head = released_region_image(), released_region_text(tiny_bert), released_xdim_head()
    path = tmp_path / "checkpoint_24.pth_528.2.tar"
    save_region_release(path, image, text, head)
    sims = evaluate_file(path, "--data_path", region_data[0], "--bert_path", tiny_bert)
    images, words = direct_region_inputs(region_data, tiny_bert, image, text)
    with torch.no_grad():
        expected = ref.xdim_scores(head["weights.weight"], head["sim_map.weight"][0], head["temp_learnable.weight"][0, 0],
                                   head["temp_scale.weight"][0, 0], images, words)
    assert np.allclose(sims, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("strategy", ["heuristic", "adaptive"])
def test_esl_region_release_loads_and_scores_like_the_released_formula(tmp_path, region_data, tiny_bert, strategy):
    torch.manual_seed(1)
    image, text, head = released_region_image(), released_region_text(tiny_bert), released_esl_region_head(strategy)
    path = tmp_path / f"esl_{strategy}.pth.tar"
    save_region_release(path, image, text, head)
    sims = evaluate_file(path, "--data_path", region_data[0], "--bert_path", tiny_bert)

    images, words = direct_region_inputs(region_data, tiny_bert, image, text)
    prefix, sims_prefix = "plus_encoder.encoders_1.", "sims.calculator_1."
    if strategy == "heuristic":
        image_levels = ref.heuristic_levels(images, [head[f"{prefix}image_levels.kernel_img_{l}.weight"]
                                                     for l in range(1, LEVELS + 1)])
        text_kernels = [head[f"{prefix}text_levels.kernel_txt_{l}.weight"] for l in range(1, LEVELS + 1)]
        caption_levels = [ref.heuristic_levels(w, text_kernels, chain_normalized=False) for w in words]
        coefficients = ref.level_coefficients(head[sims_prefix + "sim_eval.weight"][0],
                                              head[sims_prefix + "temp_scale_1.weight"][0, 0],
                                              head[sims_prefix + "temp_scale_2.weight"][0, 0], sigmoid=False)
    else:
        image_levels = ref.adaptive_levels(images, [head[f"{prefix}image_levels.masks_{l}.weight"]
                                                    for l in range(1, LEVELS + 1)])
        text_masks = [head[f"{prefix}text_levels.masks_{l}.weight"] for l in range(1, LEVELS + 1)]
        caption_levels = [ref.adaptive_levels(w, text_masks, chain_normalized=False) for w in words]
        coefficients = head[sims_prefix + "sim_eval.weight"][0]
    matrices = [torch.nn.functional.layer_norm(head[f"{sims_prefix}masks_{l}.weight"], (n, n),
                                               head[f"{sims_prefix}lynorm_{l}.weight"],
                                               head[f"{sims_prefix}lynorm_{l}.bias"], eps=1e-8)
                for l, n in enumerate(widths(D, LEVELS))]
    expected = ref.esl_region_scores(image_levels, caption_levels, widths(D, LEVELS), coefficients, matrices,
                                     head[sims_prefix + "temp_scale.weight"][0, 0])
    assert np.allclose(sims, expected.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------- ESL-CLIP
def released_openai_clip(vocab_size):
    w, e = CLIP_WIDTH, CLIP_EMBED
    state = {"logit_scale": torch.tensor(4.2), "token_embedding.weight": randn(vocab_size, w),
             "positional_embedding": randn(77, w, scale=0.05), "ln_final.weight": 1 + randn(w, scale=0.1),
             "ln_final.bias": randn(w, scale=0.1), "text_projection": randn(w, e),
             "visual.class_embedding": randn(w), "visual.positional_embedding": randn(5, w, scale=0.05),
             "visual.conv1.weight": randn(w, 3, 16, 16, scale=0.05), "visual.ln_pre.weight": 1 + randn(w, scale=0.1),
             "visual.ln_pre.bias": randn(w, scale=0.1), "visual.ln_post.weight": 1 + randn(w, scale=0.1),
             "visual.ln_post.bias": randn(w, scale=0.1), "visual.proj": randn(w, e)}
    for tower in ("visual.transformer", "transformer"):
        block = f"{tower}.resblocks.0."
        state.update({block + "attn.in_proj_weight": randn(3 * w, w, scale=0.1), block + "attn.in_proj_bias": randn(3 * w),
                      block + "attn.out_proj.weight": randn(w, w, scale=0.1), block + "attn.out_proj.bias": randn(w),
                      block + "ln_1.weight": 1 + randn(w, scale=0.1), block + "ln_1.bias": randn(w, scale=0.1),
                      block + "ln_2.weight": 1 + randn(w, scale=0.1), block + "ln_2.bias": randn(w, scale=0.1),
                      block + "mlp.c_fc.weight": randn(4 * w, w, scale=0.1), block + "mlp.c_fc.bias": randn(4 * w),
                      block + "mlp.c_proj.weight": randn(w, 4 * w, scale=0.1), block + "mlp.c_proj.bias": randn(w)})
    return state


def released_clip_head(strategy):
    prefix = "pool_frames.cross_attn."
    state = released_esl_levels(prefix + "plus_encoder.encoders_1.", strategy, CLIP_EMBED, CLIP_LEVELS)
    sims = prefix + "sims.calculator_1."
    state.update({sims + "sim_eval.weight": 0.1 + randn(1, CLIP_LEVELS + 1, scale=0.05),
                  sims + "temp_scale.weight": torch.full((1, 1), float(np.log(1 / 0.07))),
                  sims + "temp_scale_1.weight": torch.full((1, 1), -0.8),
                  sims + "temp_scale_2.weight": torch.full((1, 1), 3.5)})
    for level, n in enumerate(widths(CLIP_EMBED, CLIP_LEVELS)):
        state[f"{sims}masks_{level}.weight"] = torch.eye(n) + randn(n, n, scale=0.1)
    return state


def released_esl_clip_scores(head, image_features, text_features, strategy):
    """The ESL-CLIP scores of released-layout head tensors on CLIP embeddings, from the formulas."""
    prefix = "pool_frames.cross_attn.plus_encoder.encoders_1."
    sims_prefix = "pool_frames.cross_attn.sims.calculator_1."
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    levels, kind = (ref.heuristic_levels, "kernel_{}") if strategy == "heuristic" else (ref.adaptive_levels, "masks")
    image_levels = levels(image_features, [head[f"{prefix}image_levels.{kind.format('img')}_{l}.weight"]
                                           for l in range(1, CLIP_LEVELS + 1)])
    caption_levels = levels(text_features, [head[f"{prefix}text_levels.{kind.format('txt')}_{l}.weight"]
                                            for l in range(1, CLIP_LEVELS + 1)], chain_normalized=False)
    coefficients = ref.level_coefficients(head[sims_prefix + "sim_eval.weight"][0],
                                          head[sims_prefix + "temp_scale_1.weight"][0, 0],
                                          head[sims_prefix + "temp_scale_2.weight"][0, 0], sigmoid=True)
    matrices = [head[f"{sims_prefix}masks_{l}.weight"] for l in range(CLIP_LEVELS + 1)]
    return ref.esl_clip_scores(image_levels, caption_levels, widths(CLIP_EMBED, CLIP_LEVELS), coefficients, matrices)


def save_clip_release(path, state):
    """Pickle the authors' Config object as their code did: class config.all_config.AllConfig."""
    package, module = types.ModuleType("config"), types.ModuleType("config.all_config")
    config_class = type("AllConfig", (), {"__module__": "config.all_config"})
    module.AllConfig = config_class
    sys.modules["config"], sys.modules["config.all_config"] = package, module
    try:
        config = config_class()
        config.__dict__.update(embed_dim=CLIP_EMBED, kernel_size=2, dataset_name="MS-COCO", clip_arch="ViT-B/16")
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
                    "config": config}, path)
    finally:
        del sys.modules["config"], sys.modules["config.all_config"]


@pytest.mark.parametrize("strategy", ["heuristic", "adaptive"])
def test_esl_clip_release_loads_and_scores_like_the_released_model(tmp_path, image_data, tiny_clip, strategy):
    torch.manual_seed(2)
    root, images_dir, _ = image_data
    tokenizer = load_tokenizer("clip", tiny_clip)
    clip = released_openai_clip(len(tokenizer.get_vocab()))
    head = released_clip_head(strategy)
    path = tmp_path / f"model_best_{strategy}_coco_clip_based.pth"
    save_clip_release(path, {**{"clip." + k: v for k, v in clip.items()}, **head})
    sims = evaluate_file(path, "--dataset", "f30k", "--image_root", images_dir, "--ann_path", root,
                         "--clip_path", tiny_clip)

    entries = load_karpathy_split("f30k", root, images_dir, "test")
    pixels = torch.stack([clip_preprocess(Image.open(p), 32) for p, _ in entries])
    captions = [c for _, cs in entries for c in cs[:5]]
    with torch.no_grad():
        image_features = ref.openai_clip_image(clip, pixels, layers=1)
        text_features = torch.cat([ref.openai_clip_text(clip, torch.tensor([tokenizer(c)["input_ids"]]), layers=1)
                                   for c in captions])
    expected = released_esl_clip_scores(head, image_features, text_features, strategy)
    assert np.allclose(sims, expected.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------- converter and errors
@pytest.mark.slow
def test_converter_writes_our_format_with_the_same_scores(tmp_path, region_data, tiny_bert):
    torch.manual_seed(3)
    path = tmp_path / "released.pth.tar"
    save_region_release(path, released_region_image(), released_region_text(tiny_bert), released_xdim_head())
    converted = tmp_path / "converted.pth"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), str(path),
                             str(converted), "--bert_path", tiny_bert], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "released X-Dim checkpoint" in result.stdout
    saved = torch.load(converted, weights_only=True)
    assert saved["format"] == "dimmatch" and saved["config"]["sim_head"] == "xdim"
    original = evaluate_file(path, "--data_path", region_data[0], "--bert_path", tiny_bert)
    assert np.array_equal(evaluate_file(converted, "--data_path", region_data[0]), original)


def error_of(path, capsys, *options):
    capsys.readouterr()
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(path), "--workers", "0", *options]) == 2
    return capsys.readouterr().err.strip().removeprefix("error: ")


def test_unmapped_left_over_and_missing_keys_are_errors(tmp_path, region_data, tiny_bert, capsys):
    torch.manual_seed(4)
    image, text, head = released_region_image(), released_region_text(tiny_bert), released_xdim_head()
    extra = tmp_path / "extra.pth.tar"
    save_region_release(extra, image, text, {**head, "sim_extra.weight": torch.zeros(1)})
    assert error_of(extra, capsys, "--data_path", region_data[0], "--bert_path", tiny_bert) == (
        f"checkpoint {extra}: 1 head keys have no mapping (e.g. sim_extra.weight); "
        "is it one of the supported released formats?")
    missing = tmp_path / "missing.pth.tar"
    save_region_release(missing, {k: v for k, v in image.items() if k != "fc.bias"}, text, head)
    assert error_of(missing, capsys, "--data_path", region_data[0], "--bert_path", tiny_bert) == (
        f"checkpoint {missing}: 1 parameters of the xdim model get no value "
        "(e.g. encoders.image_encoder.fc.bias); the file is incomplete")


def test_truncated_release_and_code_in_pickles_are_refused(tmp_path, tiny_bert, capsys):
    torch.manual_seed(5)
    path = tmp_path / "release.pth.tar"
    save_region_release(path, released_region_image(), released_region_text(tiny_bert), released_xdim_head())
    truncated = tmp_path / "truncated.pth.tar"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert error_of(truncated, capsys).startswith(f"checkpoint {truncated} is truncated or corrupt")
    hostile = tmp_path / "hostile.pth"
    torch.save({"model": [], "hook": json.dumps}, hostile)   # a pickled function reference
    assert error_of(hostile, capsys) == (f"checkpoint {hostile} needs 'json.dumps' to be unpickled; refusing to "
                                         "import code from a checkpoint (is it one of the supported formats?)")


def test_a_tokenizer_folder_is_enough_for_a_released_esl_clip_checkpoint(tmp_path, image_data, tiny_clip):
    """The weights and architecture come from the checkpoint, so --clip_path may be a folder with the
    tokenizer's files only (vocab.json, merges.txt), for test.py and for the converter alike."""
    from tools.convert_checkpoint import main as convert
    root, images_dir, _ = image_data
    tokenizer_only = tmp_path / "clip_tokenizer"
    tokenizer_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(tiny_clip, name), tokenizer_only / name)
    torch.manual_seed(3)
    clip = released_openai_clip(len(load_tokenizer("clip", tiny_clip).get_vocab()))
    path = tmp_path / "model_best_heuristic_coco_clip_based.pth"
    save_clip_release(path, {**{"clip." + k: v for k, v in clip.items()}, **released_clip_head("heuristic")})
    data = ("--dataset", "f30k", "--image_root", images_dir, "--ann_path", root)
    full = evaluate_file(path, *data, "--clip_path", tiny_clip)
    assert np.array_equal(evaluate_file(path, *data, "--clip_path", str(tokenizer_only)), full)
    ours = tmp_path / "ours.pth"
    assert run_cli(convert, [str(path), str(ours), "--clip_path", str(tokenizer_only)]) == 0
    assert np.array_equal(evaluate_file(ours, *data), full)
