"""Bad input gives one clear line naming the file or option, never a traceback."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import REGION_DIM, error_line, run_cli
from cli.commands import evaluate, train
from errors import DataError
from datasets.transforms import ClipPreprocess
from datasets.karpathy import ImageFileSet, KarpathyTrainDataset, load_karpathy_split


@pytest.fixture
def data_copy(tmp_path, region_data):
    root = tmp_path / "data"
    shutil.copytree(region_data[0], root)
    return root


def train_args(data_path, tiny_bert, tmp_path, *extra):
    return ["--data_path", str(data_path), "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
            "--img_dim", str(REGION_DIM), "--batch_size", "16", "--num_epochs", "1", "--workers", "0",
            "--embed_size", "32", "--output_dir", str(tmp_path / "out"), "--device", "cpu", *extra]


def test_missing_data_folder(tmp_path, tiny_bert, capsys):
    message = error_line(train, train_args(tmp_path / "nowhere", tiny_bert, tmp_path), capsys)
    assert message == f"data folder {tmp_path / 'nowhere'} does not exist (--data_path)"


def test_missing_split_file(data_copy, tmp_path, tiny_bert, capsys):
    os.remove(data_copy / "f30k_precomp" / "train_caps.txt")
    message = error_line(train, train_args(data_copy, tiny_bert, tmp_path), capsys)
    assert message == (f"{data_copy / 'f30k_precomp' / 'train_caps.txt'} is missing "
                       "(split 'train' needs train_ims.npy and train_caps.txt)")


def test_rows_and_captions_not_one_or_five_to_one(data_copy, tmp_path, tiny_bert, capsys):
    caps = data_copy / "f30k_precomp" / "train_caps.txt"
    caps.write_text("\n".join(caps.read_text().splitlines()[:-3]) + "\n")
    message = error_line(train, train_args(data_copy, tiny_bert, tmp_path), capsys)
    assert message == (f"{caps} has 477 captions for the 96 rows of {data_copy / 'f30k_precomp' / 'train_ims.npy'}; "
                       "expected 5 per row (480) or one per row (96)")


def test_feature_size_not_img_dim(data_copy, tmp_path, tiny_bert, capsys):
    args = train_args(data_copy, tiny_bert, tmp_path)
    args[args.index("--img_dim") + 1] = "2048"
    message = error_line(train, args, capsys)
    assert message == (f"{data_copy / 'f30k_precomp' / 'train_ims.npy'} has 64-d region features, but the model takes "
                       "2048-d ones (--img_dim; a checkpoint sets its own)")


@pytest.mark.parametrize("array,expected", [
    (np.zeros((96, 8, 64), dtype=np.int64), "has dtype int64; expected float region features"),
    (np.array([None] * 96, dtype=object), "holds Python objects, not a float array (images x regions x 64)"),
    (np.zeros((96, 64), dtype=np.float32), "has shape (96, 64); expected (images, regions, 64)"),
])
def test_non_float_object_or_flat_features(data_copy, tmp_path, tiny_bert, capsys, array, expected):
    ims = data_copy / "f30k_precomp" / "train_ims.npy"
    np.save(ims, array, allow_pickle=True)
    assert error_line(train, train_args(data_copy, tiny_bert, tmp_path), capsys) == f"{ims} {expected}"


def test_truncated_feature_file(data_copy, tmp_path, tiny_bert, capsys):
    ims = data_copy / "f30k_precomp" / "train_ims.npy"
    ims.write_bytes(ims.read_bytes()[:1000])
    message = error_line(train, train_args(data_copy, tiny_bert, tmp_path), capsys)
    assert message.startswith(f"{ims} is not a readable .npy file")


def test_nan_features(data_copy, tmp_path, tiny_bert, capsys):
    ims = data_copy / "f30k_precomp" / "train_ims.npy"
    features = np.load(ims)
    features[3, 2, 1] = np.nan
    np.save(ims, features)
    args = train_args(data_copy, tiny_bert, tmp_path)
    args[args.index("--batch_size") + 1] = "480"  # one batch: every row is read
    assert error_line(train, args, capsys) == f"{ims} row 3 has NaN or infinite values"


@pytest.mark.parametrize("content,line", [("a dog\n\na cat\n", 2), ("a dog\n   \n", 2)])
def test_empty_caption_lines(data_copy, tmp_path, tiny_bert, capsys, content, line):
    caps = data_copy / "f30k_precomp" / "train_caps.txt"
    caps.write_text(content)
    message = error_line(train, train_args(data_copy, tiny_bert, tmp_path), capsys)
    assert message == f"{caps}:{line} is an empty caption line; every line must hold one caption"


def clip_args(root, images, tiny_clip, tmp_path, *extra):
    return ["--encoders", "clip", "--dataset", "f30k", "--image_root", str(images), "--ann_path", str(root),
            "--clip_path", tiny_clip, "--batch_size", "16", "--num_epochs", "1", "--workers", "0",
            "--output_dir", str(tmp_path / "out"), "--device", "cpu", *extra]


@pytest.fixture
def image_copy(tmp_path, image_data):
    root = tmp_path / "raw"
    shutil.copytree(image_data[0], root)
    return root, root / "images"


def edit_json(root, change):
    path = root / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_karpathy_json_missing_keys(image_copy, tmp_path, tiny_clip, capsys):
    root, images = image_copy
    path = edit_json(root, lambda data: data["images"][0].pop("sentences"))
    assert error_line(train, clip_args(root, images, tiny_clip, tmp_path), capsys) == \
        f"{path}: images[0] has no 'sentences'"
    path = edit_json(root, lambda data: data.pop("images"))
    assert error_line(train, clip_args(root, images, tiny_clip, tmp_path), capsys) == \
        f"{path} has no 'images' list (expected a Karpathy-format annotation file)"


def test_karpathy_split_without_images(image_copy, tmp_path, tiny_clip, capsys):
    root, images = image_copy
    path = edit_json(root, lambda data: [image.update(split="test") for image in data["images"]
                                         if image["split"] == "val"])
    message = error_line(train, clip_args(root, images, tiny_clip, tmp_path), capsys)
    assert message == f"{path} has no images in split 'val' (splits present: test, train)"


def test_unreadable_training_images_are_skipped_and_counted(image_copy, tmp_path, tiny_clip, caplog):
    root, images = image_copy
    (images / "00000.jpg").write_bytes(b"not a jpeg")
    os.remove(images / "00001.jpg")
    dataset = KarpathyTrainDataset(load_karpathy_split("f30k", str(root), str(images), "train"),
                                   caption_encoder=lambda caption: [0], transform=ClipPreprocess(32))
    item = dataset[0]          # pairs 0-4 show 00000.jpg (unreadable), 5-9 00001.jpg (missing)
    assert item["skipped"] == 10 and item["image"].shape == (3, 32, 32)
    assert run_cli(train, clip_args(root, images, tiny_clip, tmp_path)) == 0
    assert any("skipping training image" in r.message and "00000.jpg" in r.message for r in caplog.records)
    assert any("training pairs skipped (unreadable images, replaced by the next readable pair)" in r.message
               for r in caplog.records)


def test_missing_or_unreadable_evaluation_images_are_errors(image_copy, tmp_path, tiny_clip, capsys):
    root, images = image_copy
    test_image = images / "00074.jpg"   # the first test image (64 train + 10 val before it)
    test_image.write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"evaluation image .*00074.jpg cannot be read"):
        ImageFileSet([str(test_image)], ClipPreprocess())[0]
    os.remove(test_image)
    out = tmp_path / "clip"
    assert run_cli(train, clip_args(root, images, tiny_clip, tmp_path, "--output_dir", str(out),
                                    "--max_steps", "1")) == 0
    message = error_line(lambda argv: evaluate(argv, "test"),
                         ["--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0"], capsys)
    assert message == f"1 evaluation image is missing, e.g. {test_image} (--image_root)"


@pytest.fixture(scope="module")
def region_checkpoint(tmp_path_factory, region_data, tiny_bert):
    out = tmp_path_factory.mktemp("ckpt")
    args = train_args(region_data[0], tiny_bert, out, "--max_steps", "1")
    assert run_cli(train, args) == 0
    return out / "out" / "checkpoint_last.pth"


def test_checkpoint_of_another_system(region_checkpoint, image_data, tmp_path, region_data, tiny_bert, capsys):
    message = error_line(lambda argv: evaluate(argv, "test"),
                         ["--checkpoint", str(region_checkpoint), "--dataset", "f30k", "--image_root", image_data[1],
                          "--ann_path", image_data[0]], capsys)
    assert message == (f"checkpoint {region_checkpoint} is a region_bert model (xdim on BUTD regions + BERT words): "
                       "evaluate it with --data_path/--data_name, not --dataset/--image_root/--ann_path")
    message = error_line(train, train_args(region_data[0], tiny_bert, region_checkpoint.parent.parent, "--sim_head",
                                           "esl_h", "--resume", str(region_checkpoint)), capsys)
    assert message == (f"--resume {region_checkpoint}: --sim_head esl_h (the run has xdim); a resumed run keeps its "
                       f"training options (see {region_checkpoint}); start a new run, e.g. with --init_from, to "
                       "change them")


def test_truncated_and_foreign_checkpoints(region_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(region_checkpoint.read_bytes()[:5000])
    message = error_line(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(truncated)], capsys)
    assert message.startswith(f"checkpoint {truncated} is truncated or corrupt")
    foreign = tmp_path / "other.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, foreign)
    message = error_line(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(foreign)], capsys)
    assert message == f"checkpoint {foreign}: not a dimmatch checkpoint nor a released X-Dim / ESL-region / ESL-CLIP one"


@pytest.mark.parametrize("extra,expected", [
    (["--sim_head", "esl_h", "--esl_levels", "8"],
     "ESL with --esl_levels 8 needs --embed_size divisible by kernel_size**8=256, but embed_size is 32; "
     "lower --esl_levels or change --embed_size"),
    (["--batch_size", "1"], "--batch_size must be at least 2: the losses need negatives in the batch"),
    (["--amp", "fp16"], "--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)"),
    (["--loss", "infonce"], "--loss infonce needs CLIP's logit scale; use --loss hinge with region_bert encoders"),
])
def test_option_combinations_that_cannot_work(region_data, tiny_bert, tmp_path, capsys, extra, expected):
    assert error_line(train, train_args(region_data[0], tiny_bert, tmp_path, *extra), capsys) == expected


def test_xdim_needs_local_features(image_data, tiny_clip, tmp_path, capsys):
    message = error_line(train, clip_args(image_data[0], image_data[1], tiny_clip, tmp_path, "--sim_head", "xdim"),
                         capsys)
    assert message == ("--sim_head xdim needs local features, but the clip encoders give global ones; "
                       "use esl_h, esl_a or cosine")


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(region_data, tiny_bert, tmp_path, capsys):
    args = train_args(region_data[0], tiny_bert, tmp_path, "--learning_rate", "1e4", "--save_every_steps", "1")
    message = error_line(train, args, capsys)
    assert "stopped without saving it" in message and "try a lower learning rate" in message
    saved = torch.load(tmp_path / "out" / "checkpoint_last.pth", weights_only=True)
    step = saved["progress"]["global_step"]
    assert message.startswith("the loss became nan") or message.startswith("the gradient norm became")
    assert f"holds the last good state (after step {step})" in message
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from checkpoints.payload import Payload
    from errors import CheckpointError
    path = tmp_path / "checkpoint_last.pth"
    Payload(config={"step": 1}, backbone_config={}, model={}).save(str(path))

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous file, if any, is intact"):
        Payload(config={"step": 2}, backbone_config={}, model={}).save(str(path))
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["config"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pth"]


def test_a_clip_checkpoint_given_region_data_or_a_coco_test_split(short_clip_checkpoint, region_data, image_data,
                                                                 capsys):
    test = (lambda argv: evaluate(argv, "test"))
    message = error_line(test, ["--checkpoint", str(short_clip_checkpoint), "--data_path", region_data[0],
                                "--data_name", "f30k_precomp"], capsys)
    assert message.startswith(f"checkpoint {short_clip_checkpoint} is a clip model") and message.endswith(
        "evaluate it with --dataset/--image_root/--ann_path, not --data_path/--data_name")
    message = error_line(test, ["--checkpoint", str(short_clip_checkpoint), "--dataset", "coco", "--ann_path",
                                image_data[0], "--image_root", image_data[1]], capsys)
    assert message == ("COCO's annotation files are {train,dev,testall}_coco.json: there is no split 'test'; evaluate "
                       "COCO with testall.py (5K and 5-fold 1K) or --split dev")
