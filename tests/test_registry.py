"""Heads and encoder pairs are registered specs: every registered head is tested through the registry,
and a toy head (with an option of its own) and a toy encoder pair, registered here and nowhere in the
package, train with train.py and evaluate with test.py without touching any other file."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from conftest import REGION_DIM, make_config, run_cli
from cli.commands import evaluate, train
from config.schema import LOCATION, MODEL, Option
from evaluation.scoring import EncodedItems, score_all
from modules.common import l2norm
from modules.heads import GLOBAL, HEADS, LOCAL, HeadSpec, SimilarityHead, build_head

TEST = (lambda argv: evaluate(argv, "test"))
CASES = [(name, kind) for name, spec in HEADS.items() for kind in spec.feature_kinds]


def head_for(name: str, kind: str, dim: int = 16):
    torch.manual_seed(0)
    cfg = make_config(sim_head=name, embed_size=dim, esl_levels=3 if name.startswith("esl") else None)
    head = build_head(cfg, kind, "test")
    with torch.no_grad():       # away from the init, so that no term vanishes by symmetry
        for parameter in head.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape))
    return head


def features(kind: str, count: int, dim: int = 16, longest: int = 7, seed: int = 0, full: bool = False):
    """Global (N, d) features, or local (N, T, d) with lengths: captions of varying length, images
    (`full`) with all their regions, as in evaluation (padded regions are scored, as released)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == GLOBAL:
        return torch.randn(count, dim, generator=generator), None
    lengths = torch.full((count,), longest) if full else torch.randint(2, longest + 1, (count,), generator=generator)
    return l2norm(torch.randn(count, longest, dim, generator=generator)), lengths


@pytest.mark.parametrize("name,kind", CASES)
def test_forward_equals_score_on_prepared_inputs(name, kind):
    head = head_for(name, kind)
    images, image_lengths = features(kind, 4, seed=1, full=True)
    captions, caption_lengths = features(kind, 6, seed=2)
    with torch.no_grad():
        expected = head.score(head.prepare_images(images, image_lengths), image_lengths,
                              head.prepare_captions(captions, caption_lengths), caption_lengths)
    trained = head(images, image_lengths, captions, caption_lengths)       # with autograd: the training path
    assert trained.shape == (4, 6) and torch.allclose(trained, expected, atol=1e-5)


@pytest.mark.parametrize("name,kind", CASES)
def test_sharded_scoring_equals_the_full_matrix(name, kind):
    head = head_for(name, kind)
    images, image_lengths = features(kind, 7, seed=3, full=True)
    captions, caption_lengths = features(kind, 35, seed=4)
    with torch.no_grad():
        prepared_images = head.prepare_images(images, image_lengths)
        prepared_captions = head.prepare_captions(captions, caption_lengths)
        expected = head.score(prepared_images, image_lengths, prepared_captions, caption_lengths)
    for mem_gb in (1.0, 1e-7):
        sims = score_all(head, EncodedItems.from_padded(prepared_images, image_lengths),
                         EncodedItems.from_padded(prepared_captions, caption_lengths), torch.device("cpu"),
                         mem_gb=mem_gb, progress=False)
        assert np.allclose(sims, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", [name for name, kind in CASES if kind == LOCAL])
def test_word_padding_changes_nothing(name):
    head = head_for(name, LOCAL)
    images, image_lengths = features(LOCAL, 3, seed=5, full=True)
    captions, lengths = features(LOCAL, 5, seed=6)
    padded = torch.cat([captions, torch.randn(5, 4, 16)], dim=1)    # garbage after every caption's end
    with torch.no_grad():
        assert torch.allclose(head(images, image_lengths, captions, lengths),
                              head(images, image_lengths, padded, lengths), atol=1e-6)


@pytest.mark.parametrize("name,kind", CASES)
def test_gradients_are_finite_and_reach_the_features(name, kind):
    head = head_for(name, kind)
    images, image_lengths = features(kind, 4, seed=7, full=True)
    captions, caption_lengths = features(kind, 6, seed=8)
    images.requires_grad_(True)
    captions.requires_grad_(True)
    head(images, image_lengths, captions, caption_lengths).sum().backward()
    for parameter in [images, captions, *head.parameters()]:
        assert parameter.grad is None or torch.isfinite(parameter.grad).all()
    assert images.grad.abs().sum() > 0 and captions.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- a toy head with its own option

class TemperedCosine(SimilarityHead):
    """cosine of mean-pooled features times a fixed temperature."""

    feature_kinds = (LOCAL, GLOBAL)

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.scale = nn.Parameter(torch.ones(()))

    def _pooled(self, features, lengths):
        if features.dim() == 3:
            valid = (torch.arange(features.shape[1])[None, :] < lengths[:, None])[..., None]
            features = (features * valid).sum(1) / lengths[:, None]
        return l2norm(features)

    def prepare_images(self, features, lengths):
        return self._pooled(features, lengths)

    def prepare_captions(self, features, lengths):
        return self._pooled(features, lengths)

    def score(self, images, image_lengths, captions, caption_lengths):
        return self.temperature * self.scale * images @ captions.t()


TEMPERATURE = Option("toy_temperature", float, 1.0, "the toy head's temperature", MODEL, low=0, closed="()")
TOY_HEAD = HeadSpec("toy", "a tempered cosine (test only)", feature_kinds=(LOCAL, GLOBAL), options=(TEMPERATURE,),
                    build=lambda cfg, kind: TemperedCosine(cfg.toy_temperature))


def region_args(region_data, tiny_bert, out, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert, "--img_dim",
            str(REGION_DIM), "--embed_size", "16", "--batch_size", "16", "--max_steps", "6", "--workers", "0",
            "--device", "cpu", "--output_dir", str(out), *extra]


def test_a_registered_head_with_its_own_option_trains_and_evaluates(monkeypatch, tmp_path, region_data, tiny_bert,
                                                                    capsys):
    from conftest import error_line
    from config import catalogue
    register(monkeypatch, HEADS, catalogue.HEADS, TOY_HEAD)
    out = tmp_path / "run"
    assert run_cli(train, region_args(region_data, tiny_bert, out, "--sim_head", "toy", "--toy_temperature", "3")) == 0
    assert json.loads((out / "config.json").read_text())["toy_temperature"] == 3.0
    result = evaluate(["--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0"])
    assert 0 <= result["report"]["rsum"] <= 600
    assert error_line(train, region_args(region_data, tiny_bert, tmp_path / "bad", "--sim_head", "toy",
                                         "--toy_temperature", "0"), capsys) == \
        "--toy_temperature must be greater than 0 (got 0.0)"


# ----------------------------------------------------------------------------- a toy encoder pair

class GridFiles(Dataset):
    """<grid_path>/{split}_grid.npy (images x cells x dim) with {split}_caps.txt (5 per image)."""

    def __init__(self, folder: str, split: str, grid_dim: int):
        from datasets.precomp import read_captions
        self.grid = np.load(os.path.join(folder, f"{split}_grid.npy"))
        self.captions = read_captions(os.path.join(folder, f"{split}_caps.txt"))
        assert self.grid.shape[2] == grid_dim

    def __len__(self):
        return self.grid.shape[0]

    def __getitem__(self, index):
        return {"image": torch.from_numpy(self.grid[index]).float(), "index": index}

    def identity(self):
        return {"kind": "grid", "rows": len(self)}


class GridPairs(Dataset):
    def __init__(self, grid: GridFiles, encoder):
        self.grid, self.encoder = grid, encoder

    def set_epoch(self, epoch):
        pass

    def identity(self):
        return {"pairs": len(self)}

    def __len__(self):
        return len(self.grid.captions)

    def __getitem__(self, index):
        return {**self.grid[index // 5], "ids": self.encoder(self.grid.captions[index]), "index": index}


class GridBertEncoders(nn.Module):
    feature_kind, text_kind, logit_scale = LOCAL, "grid_words", None

    def __init__(self, grid_dim: int, embed_size: int, bert):
        from modules.text_encoder import BertTextEncoder
        super().__init__()
        self.cells = nn.Linear(grid_dim, embed_size)
        self.text_encoder = BertTextEncoder(bert, embed_size)

    def encode_images(self, grid, lengths):
        return l2norm(self.cells(grid)), lengths

    def encode_captions(self, input_ids, lengths):
        return self.text_encoder(input_ids), lengths

    def text_tokens(self):
        return self.text_encoder.text_tokens()

    def backbone_config(self):
        return self.text_encoder.bert.config.to_dict()

    def optimizer_groups(self, cfg):
        return [{"params": list(self.parameters()), "lr": cfg.learning_rate, "name": "grid_bert"}]


def grid_layout(captions_per_image: int = 5, name: str = "grid"):
    """A layout of region-like rows: <grid_path>/{split}_grid.npy with {split}_caps.txt."""
    from datasets.layouts import REGIONS, DataLayout, EvalSplit
    from errors import ConfigError

    def resolve(values, given):
        if not values["grid_path"]:
            raise ConfigError(f"the {name} layout needs --grid_path")
        values["val_split"] = values["val_split"] or "dev"

    def eval_split(cfg, split, max_images, transform):
        grid = GridFiles(cfg.grid_path, split, cfg.grid_dim)
        return EvalSplit(grid, grid.captions, captions_per_image, f"{cfg.grid_path} {split}")

    return DataLayout(
        name=name, summary=f"grid rows, {captions_per_image} captions each (test only)", images=REGIONS,
        options=(Option("grid_path", str, None, "folder of {split}_grid.npy", LOCATION, evaluation=True),
                 Option("grid_dim", int, 24, "grid feature size", MODEL, low=1, evaluation=True)),
        required=("grid_path",), captions_per_image=captions_per_image, resolve=resolve,
        train_dataset=lambda cfg, encoder, transform: GridPairs(GridFiles(cfg.grid_path, "train", cfg.grid_dim),
                                                                encoder),
        eval_split=eval_split,
        input_files=lambda cfg, split: [os.path.join(cfg.grid_path, f"{split}_{name}") for name in ("grid.npy",
                                                                                                 "caps.txt")])


def toy_pair(recipe: str):
    from datasets.layouts import REGIONS
    from modules.text_encoder import bert_text_tokens, build_bert
    from pairs import EncoderPair, region_bert

    def resolve(values, given):
        values["embed_size"] = values["embed_size"] or HEADS[values["sim_head"]].embed_size

    return EncoderPair(
        name="grid_bert", summary="grid features + BERT words (test only)", feature_kind=LOCAL, text_kind="grid_words",
        backbone_option="bert_path", options=(), default_recipe=recipe, head_lr_option="learning_rate",
        logit_scale=False, reads=REGIONS, default_layout=lambda values: "grid",
        build_encoders=lambda cfg, backbone: GridBertEncoders(cfg.grid_dim, cfg.embed_size,
                                                              build_bert(cfg.bert_path, config=backbone)),
        text_tokens=bert_text_tokens, text_positions=region_bert.text_positions,
        caption_encoder=region_bert.caption_encoder, resolve=resolve)


def register(monkeypatch, registry: dict, declarations: dict, spec) -> None:
    """A spec registered for this test only, with its declaration for the command line."""
    from config.catalogue import Declared
    monkeypatch.setitem(registry, spec.name, spec)
    monkeypatch.setitem(declarations, spec.name, Declared(spec.name, spec.summary, getattr(spec, "options", ())))


def write_grid_data(folder, region_data):
    """The region test data's captions with grid features that carry their structure (the regions'
    first 24 dimensions, 8 cells)."""
    os.makedirs(folder, exist_ok=True)
    for split in ("train", "dev", "test"):
        regions = np.load(os.path.join(region_data[0], "f30k_precomp", f"{split}_ims.npy"))
        np.save(os.path.join(folder, f"{split}_grid.npy"), regions[:, :, :24].astype(np.float32))
        with open(os.path.join(region_data[0], "f30k_precomp", f"{split}_caps.txt"), encoding="utf-8") as source:
            (folder / f"{split}_caps.txt").write_text(source.read(), encoding="utf-8")


def test_a_registered_encoder_pair_trains_and_evaluates_end_to_end(monkeypatch, tmp_path, region_data, tiny_bert):
    """The toy pair brings its own tokenizer family and its own loss, registered here only."""
    from transformers import BertTokenizer
    from datasets.captions import TOKENIZER_FAMILIES, TokenizerFamily
    from config import catalogue
    from datasets.layouts import LAYOUTS
    from modules.losses import LOSSES, HingeLoss, LossSpec
    from pairs import PAIRS
    recipe = tmp_path / "grid_recipe.json"
    recipe.write_text(json.dumps({"description": "toy", "options": {
        "encoders": "grid_bert", "sim_head": "esl_a", "batch_size": 16, "num_epochs": 2, "schedule": "step",
        "optimizer": "adamw", "weight_decay": 1e-4, "adam_eps": 1e-8, "grad_clip": 2.0, "loss": "toy_hinge",
        "evals_per_epoch": 1, "last_batch": "drop", "val_protocol": "first_1k"}}))
    register(monkeypatch, PAIRS, catalogue.PAIRS, toy_pair(str(recipe)))
    register(monkeypatch, LAYOUTS, catalogue.LAYOUTS, grid_layout())
    monkeypatch.setitem(TOKENIZER_FAMILIES, "grid_words", TokenizerFamily(
        "grid_words", "--bert_path", (("vocab.txt",),), BertTokenizer, ("pad_token", "cls_token", "sep_token"),
        pad_masked=True))
    built = []

    def toy_loss(cfg):
        built.append(cfg.margin)
        return HingeLoss(0.1, max_violation=True)
    register(monkeypatch, LOSSES, catalogue.LOSSES, LossSpec("toy_hinge", "a hardest-negative hinge (test only)",
                                                             toy_loss))
    grid = tmp_path / "grid"
    write_grid_data(grid, region_data)
    out = tmp_path / "run"
    assert run_cli(train, ["--encoders", "grid_bert", "--grid_path", str(grid), "--bert_path", tiny_bert,
                           "--embed_size", "16", "--batch_size", "16", "--max_steps", "8", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["encoders"], config["sim_head"], config["grid_dim"]) == ("grid_bert", "esl_a", 24)
    assert config["loss"] == "toy_hinge" and built == [config["margin"]]
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["tokenizer"]["kind"] == "grid_words"
    sims = tmp_path / "sims.npy"
    assert run_cli(TEST, ["--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0",
                          "--save_sims", str(sims)]) == 0
    assert np.load(sims).shape == (10, 50)
