"""train.py --init_from: start from any checkpoint we read, and one step equals the released recipe.

The step-parity tests rebuild one released training step from the formulas (tests/reference.py,
the hinge / InfoNCE losses, grad-norm clipping, and the two AdamW variants written out below) on
the same weights and the same batch, the whole tiny training split, and compare every weight."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertConfig, BertModel

import reference as ref
from conftest import REGION_DIM, error_line, run_cli
from test_released import (LEVELS, D, released_clip_head, released_esl_clip_scores, released_esl_region_head,
                           released_openai_clip, released_region_image, released_region_text, released_xdim_head,
                           save_clip_release, save_region_release, widths)
from checkpoints.released import (CLIP_RULES, ESL_CLIP_HEAD_RULES, ESL_REGION_HEAD_RULES, REGION_IMAGE_RULES,
                                  REGION_TEXT_RULES, XDIM_HEAD_RULES, map_keys)
from cli.commands import train
from datasets.captions import load_tokenizer
from datasets.karpathy import load_karpathy_split
from datasets.precomp import PrecompSplit
from datasets.transforms import clip_preprocess
from demo.data import write_image_dataset, write_region_dataset


def assert_same_step(ours, expected, start, grad, lr, name):
    """Equal weights after the step, up to float32 round-off: 2e-6 absolute plus 0.2% of the step.
    Where the gradient is at round-off level (|g| < 1e-6: e.g. the bias before a BatchNorm, whose
    gradient is analytically zero), Adam's first step lr g / (|g| + eps) follows the round-off in
    the released code as in ours, so there only a step of at most lr is required of both."""
    ours, expected, start = (x.double().reshape(ours.shape) for x in (ours, expected, start))
    grad = torch.zeros_like(ours) if grad is None else grad.double().reshape(ours.shape)
    tolerance = torch.where(grad.abs() < 1e-6, torch.full_like(ours, 2 * lr), 2e-6 + 2e-3 * (expected - start).abs())
    error = (ours - expected).abs()
    assert bool((error <= tolerance).all()), (name, float(error.max()))


def region_args(data, bert, out, *extra):
    return ["--data_path", str(data), "--data_name", "f30k_precomp", "--bert_path", str(bert), "--img_dim",
            str(REGION_DIM), "--batch_size", "16", "--workers", "0", "--device", "cpu", "--output_dir", str(out),
            *extra]


@pytest.fixture(scope="module")
def esl_run(tmp_path_factory, region_data, tiny_bert):
    out = tmp_path_factory.mktemp("init_source") / "run"
    assert run_cli(train, region_args(region_data[0], tiny_bert, out, "--sim_head", "esl_h", "--embed_size", "16",
                                      "--max_steps", "3")) == 0
    return out / "checkpoint_last.pth"


def test_init_from_our_checkpoint_takes_its_model_and_weights(esl_run, region_data, tmp_path):
    out = tmp_path / "finetune"
    # no --bert_path, --sim_head or --embed_size: all come from the checkpoint
    args = ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--img_dim", str(REGION_DIM),
            "--batch_size", "16", "--workers", "0", "--device", "cpu", "--output_dir", str(out),
            "--init_from", str(esl_run), "--max_steps", "1", "--learning_rate", "1e-12"]
    assert run_cli(train, args) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["sim_head"], config["embed_size"], config["init_from"]) == ("esl_h", 16, str(esl_run))
    assert config["init_source"].startswith("dimmatch checkpoint (region_bert + esl_h); epoch 0, step 3 of 30")
    start = torch.load(esl_run, weights_only=True)["model"]
    after = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert after["progress"]["global_step"] == 1 and after["optimizer"]["state"]
    for key, value in start.items():   # lr 1e-12: the weights are the checkpoint's (BatchNorm statistics move)
        if "running_" not in key and "num_batches" not in key:
            assert torch.allclose(after["model"][key], value, atol=1e-10, rtol=0), key


def test_init_from_refuses_contradicting_options_and_resume(esl_run, region_data, tiny_bert, tmp_path, capsys):
    base = region_args(region_data[0], tiny_bert, tmp_path / "o", "--init_from", str(esl_run))
    assert error_line(train, base + ["--embed_size", "32"], capsys) == (
        f"--embed_size 32 contradicts --init_from {esl_run}, whose embed_size is 16; drop --embed_size or start "
        "from another checkpoint")
    assert error_line(train, base + ["--sim_head", "xdim"], capsys) == (
        f"--sim_head xdim contradicts --init_from {esl_run}, whose sim_head is esl_h; drop --sim_head or start "
        "from another checkpoint")
    assert error_line(train, base + ["--resume", "auto"], capsys) == (
        "--resume continues a run with its own weights and optimiser; --init_from starts a new one from a "
        "checkpoint's weights: give one of them")
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- step parity: region (X-Dim)

@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("bert_no_dropout")
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def xdim_scores(h, images, words):
    return ref.xdim_scores(h["weights.weight"], h["sim_map.weight"][0], h["temp_learnable.weight"][0, 0],
                           h["temp_scale.weight"][0, 0], images, words)


def esl_h_scores(h, images, words):
    levels, sims = "plus_encoder.encoders_1.", "sims.calculator_1."
    image_levels = ref.heuristic_levels(images, [h[f"{levels}image_levels.kernel_img_{l}.weight"]
                                                 for l in range(1, LEVELS + 1)])
    caption_levels = [ref.heuristic_levels(w, [h[f"{levels}text_levels.kernel_txt_{l}.weight"]
                                               for l in range(1, LEVELS + 1)], chain_normalized=False) for w in words]
    coefficients = ref.level_coefficients(h[sims + "sim_eval.weight"][0], h[sims + "temp_scale_1.weight"][0, 0],
                                          h[sims + "temp_scale_2.weight"][0, 0], sigmoid=False)
    matrices = [F.layer_norm(h[f"{sims}masks_{l}.weight"], (n, n), h[f"{sims}lynorm_{l}.weight"],
                             h[f"{sims}lynorm_{l}.bias"], eps=1e-8) for l, n in enumerate(widths(D, LEVELS))]
    return ref.esl_region_scores(image_levels, caption_levels, widths(D, LEVELS), coefficients, matrices,
                                 h[sims + "temp_scale.weight"][0, 0])


def released_region_step(score, image, text, head, regions, captions, bert_dir, lr, weight_decay=1e-4, clip=2.0,
                         margin=0.2, eps=1e-8):
    """One released region training step (X-Dim and ESL-region share it) from the formulas:
    BatchNorm with batch statistics, the summed hinge of the first epoch, the grad norm clipped
    over all parameters, torch AdamW with the text-linear / BERT (lr/10) / image / head groups."""
    params = {("image", k): v.clone().requires_grad_(v.is_floating_point() and "running" not in k)
              for k, v in image.items()}
    params.update({("head", k): v.clone().requires_grad_(True) for k, v in head.items()})
    params.update({("text", k): v.clone().requires_grad_(True) for k, v in text.items() if k.startswith("linear")})
    bert = BertModel(BertConfig.from_pretrained(bert_dir), add_pooling_layer=False).train()
    bert.load_state_dict({k[len("bert."):]: v for k, v in text.items()
                          if k.startswith("bert.") and "pooler" not in k and "position_ids" not in k})
    p = {key[1]: value for key, value in params.items() if key[0] == "image"}

    flat = regions.reshape(-1, regions.shape[-1])
    hidden = flat @ p["mlp.layers.0.weight"].t() + p["mlp.layers.0.bias"]
    mean, var = hidden.mean(0), hidden.var(0, unbiased=False)
    hidden = (hidden - mean) / torch.sqrt(var + 1e-5) * p["mlp.bns.0.weight"] + p["mlp.bns.0.bias"]
    features = flat @ p["fc.weight"].t() + p["fc.bias"] + torch.relu(hidden) @ p["mlp.layers.1.weight"].t() \
        + p["mlp.layers.1.bias"]
    images = ref.l2n(features.view(*regions.shape[:2], -1))
    words = []
    for ids in captions:
        hidden_words = bert(torch.tensor([ids])).last_hidden_state[0]
        words.append(ref.l2n(hidden_words @ params[("text", "linear.weight")].t() + params[("text", "linear.bias")]))
    sims = score({key[1]: value for key, value in params.items() if key[0] == "head"}, images, words)
    positives = sims.diag()
    eye = torch.eye(len(sims), dtype=torch.bool)
    loss = (margin + sims - positives[None, :]).clamp(min=0).masked_fill(eye, 0).sum() + \
        (margin + sims - positives[:, None]).clamp(min=0).masked_fill(eye, 0).sum()
    loss.backward()

    trained = [(key, tensor) for key, tensor in params.items() if tensor.grad is not None]
    trained += [(("bert", name), tensor) for name, tensor in bert.named_parameters() if tensor.grad is not None]
    norm = torch.sqrt(sum((tensor.grad ** 2).sum() for _, tensor in trained))
    scale = min(1.0, clip / (float(norm) + 1e-6))
    group_lr = {"text": lr, "bert": lr * 0.1, "image": lr, "head": lr}
    updated, grads = {}, {}
    with torch.no_grad():
        for (part, name), tensor in trained:
            g = grads[(part, name)] = tensor.grad * scale
            step_lr = group_lr[part]
            updated[(part, name)] = tensor * (1 - step_lr * weight_decay) - step_lr * g / (g.abs() + eps)
    return updated, grads, (mean.detach(), var.detach() * len(flat) / (len(flat) - 1))


@pytest.mark.parametrize("system", ["xdim", "esl_h"])
def test_one_region_step_equals_the_released_recipe(tmp_path, bert_without_dropout, system):
    torch.manual_seed(0)
    data = tmp_path / "data"
    write_region_dataset(str(data), {"train": 4, "dev": 2, "test": 2}, regions=6, dim=REGION_DIM, seed=5)
    image, text = released_region_image(), released_region_text(bert_without_dropout)
    head = released_xdim_head() if system == "xdim" else released_esl_region_head("heuristic")
    head_rules, score = (XDIM_HEAD_RULES, xdim_scores) if system == "xdim" else \
        (ESL_REGION_HEAD_RULES["esl_h"], esl_h_scores)
    release = tmp_path / "checkpoint_24.pth_528.2.tar"
    save_region_release(release, image, text, head)
    out = tmp_path / "run"
    lr = 5e-4
    assert run_cli(train, region_args(data, bert_without_dropout, out, "--init_from", str(release),
                                      "--batch_size", "20", "--max_steps", "1", "--region_drop", "0",
                                      "--word_aug", "0", "--learning_rate", str(lr))) == 0
    ours = torch.load(out / "checkpoint_last.pth", weights_only=True)["model"]

    split = PrecompSplit(str(data), "f30k_precomp", "train", REGION_DIM)
    regions = torch.stack([split.features(split.image_row(i)) for i in range(len(split.captions))])
    tokenizer = load_tokenizer("bert", str(bert_without_dropout))
    captions = [tokenizer(caption)["input_ids"] for caption in split.captions]
    updated, grads, (batch_mean, batch_var) = released_region_step(score, image, text, head, regions, captions,
                                                                   bert_without_dropout, lr)
    released = {"image": dict(image), "text": dict(text), "head": dict(head)}
    released_grads = {"image": {}, "text": {}, "head": {}}
    for (part, name), tensor in updated.items():
        side, key = ("text", "bert." + name) if part == "bert" else (part, name)
        released[side][key], released_grads[side][key] = tensor, grads[(part, name)]
    bn = "mlp.bns.0."
    released["image"][bn + "running_mean"] = 0.9 * image[bn + "running_mean"] + 0.1 * batch_mean
    released["image"][bn + "running_var"] = 0.9 * image[bn + "running_var"] + 0.1 * batch_var
    released["image"][bn + "num_batches_tracked"] = image[bn + "num_batches_tracked"] + 1
    expected = {**map_keys(released["image"], REGION_IMAGE_RULES, "ref", "image"),
                **map_keys(released["text"], REGION_TEXT_RULES, "ref", "text"),
                **map_keys(released["head"], head_rules, "ref", "head")}
    assert set(expected) == set(ours)
    start = {**map_keys(image, REGION_IMAGE_RULES, "r", "i"), **map_keys(text, REGION_TEXT_RULES, "r", "t"),
             **map_keys(head, head_rules, "r", "h")}
    gradients = {**map_keys(released_grads["image"], REGION_IMAGE_RULES, "r", "i"),
                 **map_keys(released_grads["text"], REGION_TEXT_RULES, "r", "t"),
                 **map_keys(released_grads["head"], head_rules, "r", "h")}
    for key, value in ours.items():
        assert_same_step(value, expected[key], start[key], gradients.get(key), lr, key)
    assert not torch.equal(ours["encoders.image_encoder.fc.weight"], image["fc.weight"])


# ----------------------------------------------------------------------------- step parity: ESL-CLIP

def bert_adamw_step(tensor, grad, lr, weight_decay, eps=1e-6, beta1=0.9, beta2=0.999):
    """Step 1 of the original BERT AdamW: eps outside the bias correction, decay after the step."""
    first, second = (1 - beta1) * grad, (1 - beta2) * grad * grad
    step_size = lr * math.sqrt(1 - beta2) / (1 - beta1)
    return (tensor - step_size * first / (second.sqrt() + eps)) * (1 - lr * weight_decay)


def test_one_esl_clip_step_equals_the_released_recipe(tmp_path, tiny_clip):
    torch.manual_seed(3)
    root = tmp_path / "data"
    write_image_dataset(str(root), {"train": 4, "val": 2, "test": 2}, image_size=40, seed=7)
    tokenizer = load_tokenizer("clip", tiny_clip)
    clip = released_openai_clip(len(tokenizer.get_vocab()))
    head = released_clip_head("heuristic")
    release = tmp_path / "model_best_heuristic_coco_clip_based.pth"
    save_clip_release(release, {**{"clip." + k: v for k, v in clip.items()}, **head})
    out = tmp_path / "run"
    clip_lr, head_lr, weight_decay = 1e-3, 1e-2, 0.2
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", str(root / "images"),
                           "--ann_path", str(root), "--clip_path", tiny_clip, "--init_from", str(release),
                           "--batch_size", "20", "--num_epochs", "1", "--max_steps", "1", "--workers", "0",
                           "--clip_lr", str(clip_lr), "--noclip_lr", str(head_lr), "--device", "cpu",
                           "--output_dir", str(out)]) == 0
    ours = torch.load(out / "checkpoint_last.pth", weights_only=True)["model"]

    entries = load_karpathy_split("f30k", str(root), str(root / "images"), "train")
    pairs = [(path, caption) for path, captions in entries for caption in captions]
    pixels = torch.stack([clip_preprocess(Image.open(path), 32) for path, _ in pairs])
    params = {k: v.clone().requires_grad_(True) for k, v in {**{"clip." + k: v for k, v in clip.items()},
                                                             **head}.items()}
    c = {k[len("clip."):]: v for k, v in params.items() if k.startswith("clip.")}
    image_features = ref.openai_clip_image(c, pixels, layers=1)
    text_features = torch.cat([ref.openai_clip_text(c, torch.tensor([tokenizer(caption)["input_ids"]]), layers=1)
                               for _, caption in pairs])
    sims = released_esl_clip_scores(params, image_features, text_features, "heuristic")
    logits = sims * params["clip.logit_scale"].exp()
    targets = torch.arange(len(pairs))
    loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2
    loss.backward()
    trained = {k: v for k, v in params.items() if v.grad is not None}
    norm = torch.sqrt(sum((v.grad ** 2).sum() for v in trained.values()))
    scale = min(1.0, 1.0 / (float(norm) + 1e-6))
    with torch.no_grad():
        updated = {k: bert_adamw_step(v, v.grad * scale, clip_lr if k.startswith("clip.") else head_lr, weight_decay)
                   for k, v in trained.items()}
    grads = {**map_keys({k: v.grad * scale for k, v in trained.items() if k.startswith("clip.")}, CLIP_RULES, "r", "c"),
             **map_keys({k: v.grad * scale for k, v in trained.items() if not k.startswith("clip.")},
                        ESL_CLIP_HEAD_RULES, "r", "h")}
    released = {**{"clip." + k: v for k, v in clip.items()}, **head, **updated}
    released["clip.logit_scale"] = released["clip.logit_scale"].clamp(max=math.log(100))
    expected = {**map_keys({k: v for k, v in released.items() if k.startswith("clip.")}, CLIP_RULES, "ref", "clip"),
                **map_keys({k: v for k, v in released.items() if not k.startswith("clip.")}, ESL_CLIP_HEAD_RULES,
                           "ref", "head")}
    assert set(expected) == set(ours)
    start = {**map_keys({k: v for k, v in {**{"clip." + k: v for k, v in clip.items()}}.items()}, CLIP_RULES, "r", "c"),
             **map_keys(head, ESL_CLIP_HEAD_RULES, "r", "h")}
    for key, value in ours.items():
        assert_same_step(value, expected[key], start[key], grads.get(key),
                         clip_lr if key.startswith("encoders.") else head_lr, key)
    assert not torch.equal(ours["head.sigma"],
                           head["pool_frames.cross_attn.sims.calculator_1.temp_scale_1.weight"].reshape(()))
