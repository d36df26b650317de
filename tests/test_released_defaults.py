"""The released recipes' behaviours that are our defaults: ESL-CLIP's caption cut, its kept last
partial batch, and its COCO model selection on the 5-fold dev split."""

import json
import logging

import pytest
import torch

from conftest import make_config, run_cli
from cli.commands import train
from datasets.batching import ResumableBatchSampler
from datasets.captions import ClipCaptionEncoder, load_tokenizer
from evaluation.metrics import retrieval_metrics
from evaluation.protocol import compute_split_scores, validation_metrics
from pairs import build_model, load_eval_split
from test_recipes import coco_layout


def long_caption(captions, words=100) -> str:
    vocabulary = " ".join(captions).split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


@pytest.mark.parametrize("truncation", ["released", "keep_eot"])
def test_a_100_word_clip_caption_is_cut_and_pooled_as_configured(image_data, tiny_clip, truncation, caplog):
    tokenizer = load_tokenizer("clip", tiny_clip)
    caption = long_caption(image_data[2])
    full = tokenizer(caption)["input_ids"]
    assert len(full) > 100 and full[0] == tokenizer.bos_token_id and full[-1] == tokenizer.eos_token_id
    encoder = ClipCaptionEncoder(tokenizer, 77, truncation)
    with caplog.at_level(logging.WARNING, logger="dimmatch"):
        ids = encoder(caption)
        encoder(caption)
    notes = [record.message for record in caplog.records if "longer than" in record.message]
    assert len(notes) == 1
    if truncation == "released":
        assert ids == full[:77] and tokenizer.eos_token_id not in ids
        assert "end token dropped, as the released ESL-CLIP tokenisation does" in notes[0]
        pooled_at = 0       # no end token left: the start token is the largest id, and argmax finds it
    else:
        assert ids == full[:76] + [tokenizer.eos_token_id]
        assert "--clip_truncation keep_eot" in notes[0] and "released ESL-CLIP tokenisation drops" in notes[0]
        pooled_at = 76
    cfg = make_config(encoders="clip", sim_head="esl_h", embed_size=32, kernel_size=2, esl_levels=5, cosine_pool="mean",
                 clip_path=tiny_clip)
    text_model = build_model(cfg).encoders.clip.text_model.eval()
    with torch.no_grad():
        output = text_model(input_ids=torch.tensor([ids]))
    assert torch.equal(output.pooler_output[0], output.last_hidden_state[0, pooled_at])


def test_steps_per_epoch_keep_the_last_partial_batch():
    kept, dropped = ResumableBatchSampler(145000, 64, seed=0, drop_last=False), ResumableBatchSampler(145000, 64, 0)
    assert (kept.batches_per_epoch(), kept.last_batch_size()) == (2266, 40)   # Flickr30K: ceil(145,000 / 64)
    assert dropped.batches_per_epoch() == 2265
    single = ResumableBatchSampler(330, 64, seed=3, drop_last=False)
    single.set_epoch(1)
    batches = list(single)
    assert [len(b) for b in batches] == [64] * 5 + [10] and sorted(sum(batches, [])) == list(range(330))
    ranks = [ResumableBatchSampler(330, 64, seed=3, rank=r, world=4, drop_last=False) for r in range(4)]
    for sampler in ranks:
        sampler.set_epoch(1)
    per_rank = [list(sampler) for sampler in ranks]
    assert [len(shares[-1]) for shares in per_rank] == [3, 3, 2, 2]
    assert [sum(parts, []) for parts in zip(*per_rank)] == batches     # the ranks' shares form the global batch


def clip_run(image_data, tiny_clip, out, *extra):
    root, images, _ = image_data
    return ["--encoders", "clip", "--sim_head", "esl_h", "--dataset", "f30k", "--image_root", images,
            "--ann_path", root, "--clip_path", tiny_clip, "--batch_size", "48", "--num_epochs", "2",
            "--workers", "0", "--device", "cpu", "--seed", "3", "--evals_per_epoch", "1", "--noclip_lr", "1e-3",
            "--output_dir", str(out), *extra]


@pytest.mark.slow
def test_clip_recipe_trains_the_partial_batch_and_resumes_exactly(tmp_path, image_data, tiny_clip):
    """320 pairs in batches of 48: 7 steps an epoch, the last of 32 pairs; stopped inside the second
    epoch and resumed, the run ends with the uninterrupted run's weights."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli(train, clip_run(image_data, tiny_clip, straight)) == 0
    assert run_cli(train, clip_run(image_data, tiny_clip, stopped, "--max_steps", "10")) == 0
    assert torch.load(stopped / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 10
    # a resumed run keeps its limits: --max_steps 0 lifts the one it was stopped by
    assert run_cli(train, clip_run(image_data, tiny_clip, stopped, "--resume", "auto", "--max_steps", "0")) == 0
    a, b = (torch.load(run / "checkpoint_last.pth", weights_only=True) for run in (straight, stopped))
    assert a["progress"]["steps_per_epoch"] == 7 and a["progress"]["global_step"] == 14
    assert a["progress"] == b["progress"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads((straight / "config.json").read_text())["last_batch"] == "keep"


@pytest.mark.parametrize("protocol", ["first_1k", "last_fold", "mean_5fold"])
def test_validation_protocols_select_on_the_released_folds(tmp_path, image_data, tiny_clip, protocol):
    """COCO layout with 10 dev images: five folds of 2. last_fold selects on the rSum of the last
    fold's diagonal block (what the released ESL-CLIP COCO trainer returns), mean_5fold on the mean."""
    coco = coco_layout(image_data, tmp_path / "coco")
    cfg = make_config(encoders="clip", sim_head="esl_h", embed_size=32, kernel_size=2, esl_levels=5, cosine_pool="mean",
                 clip_path=tiny_clip, image_size=32, dataset="coco", image_root=str(coco), ann_path=str(coco))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    data = load_eval_split(cfg, "dev")
    encoder = ClipCaptionEncoder(load_tokenizer("clip", tiny_clip))
    options = dict(batch_size=4, workers=0, progress=False)
    full, _ = compute_split_scores(model, data, encoder, torch.device("cpu"), **options)
    blocks = [retrieval_metrics(full[2 * f:2 * f + 2, 10 * f:10 * f + 10]) for f in range(5)]
    selected = validation_metrics(model, data, protocol, encoder, torch.device("cpu"), **options)
    if protocol == "first_1k":
        assert selected == retrieval_metrics(full)         # 10 images: all of them
        return
    assert [fold["rsum"] for fold in selected["folds"]] == pytest.approx([block["rsum"] for block in blocks])
    expected = blocks[-1]["rsum"] if protocol == "last_fold" else sum(b["rsum"] for b in blocks) / 5
    assert selected["rsum"] == pytest.approx(expected)


def test_coco_clip_recipe_selects_on_the_last_dev_fold(tmp_path, image_data, tiny_clip):
    coco = coco_layout(image_data, tmp_path / "coco")
    root, images, _ = image_data
    out = tmp_path / "run"
    assert run_cli(train, ["--encoders", "clip", "--dataset", "coco", "--image_root", str(coco), "--ann_path",
                           str(coco), "--clip_path", tiny_clip, "--batch_size", "48", "--num_epochs", "1",
                           "--evals_per_epoch", "1", "--workers", "0", "--device", "cpu", "--max_steps", "7",
                           "--output_dir", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["val_protocol"], config["val_split"], config["last_batch"]) == ("last_fold", "dev", "keep")
    best = json.loads((out / "best_metrics.json").read_text())["metrics"]
    assert len(best["folds"]) == 5 and best["rsum"] == best["folds"][-1]["rsum"]


def test_selection_on_test_stays_refused(image_data, tiny_clip, tmp_path, capsys):
    from conftest import error_line
    message = error_line(train, clip_run(image_data, tiny_clip, tmp_path / "run", "--val_split", "test"), capsys)
    assert message.startswith("--val_split test: the model would be selected on the test set")


def test_released_clip_text_cleaning(tiny_clip):
    from datasets.captions import released_clip_clean
    raw = "  a dog &amp;amp; a \u201ccat\u201d at the caf\u00c3\u00a9  "   # double-escaped HTML, curly quotes, mojibake
    assert released_clip_clean(raw) == 'a dog & a "cat" at the caf\u00e9'
    tokenizer = load_tokenizer("clip", tiny_clip)
    released, plain = ClipCaptionEncoder(tokenizer), ClipCaptionEncoder(tokenizer, cleaning="tokenizer")
    assert released(raw) == plain(released_clip_clean(raw)) != plain(raw)


def test_truncated_images_load_as_released_or_are_refused(tmp_path, caplog):
    from PIL import Image
    from datasets.karpathy import read_image
    path = tmp_path / "cut.jpg"
    Image.effect_noise((128, 128), 60).convert("RGB").save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-4000])
    image, problem = read_image(str(path), "refuse")
    assert image is None and problem.startswith("cannot be read (") and "truncated" in problem.lower()
    with caplog.at_level(logging.WARNING, logger="dimmatch"):
        image, problem = read_image(str(path), "load")
    assert problem is None and image.size == (128, 128)
    assert any("is truncated; decoded as far as it goes, as the released COCO loader does" in r.message
               for r in caplog.records)
