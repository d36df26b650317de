"""Dataset readers on small folders written in the real formats, tokenisation, batching."""

import json
import os

import numpy as np
import pytest
import torch

from datasets.batching import CaptionSet, Collate, ResumableBatchSampler
from datasets.captions import BertCaptionEncoder, load_tokenizer
from datasets.karpathy import evaluation_entries, load_karpathy_split
from datasets.precomp import PrecompImageSet, PrecompSplit, PrecompTrainDataset


def write_precomp(root, split, rows, captions, regions=4, dim=8):
    folder = os.path.join(root, "f30k_precomp")
    os.makedirs(folder, exist_ok=True)
    features = np.arange(rows * regions * dim, dtype=np.float32).reshape(rows, regions, dim)
    np.save(os.path.join(folder, f"{split}_ims.npy"), features)
    with open(os.path.join(folder, f"{split}_caps.txt"), "w") as handle:
        handle.write("\n".join(captions) + "\n")
    return features


@pytest.fixture
def encoder(tiny_bert):
    return BertCaptionEncoder(load_tokenizer("bert", tiny_bert), word_aug=0.2)


def test_precomp_one_row_per_image(tmp_path, encoder):
    captions = [f"a red dog number {i}" for i in range(10)]
    features = write_precomp(tmp_path, "test", 2, captions)
    split = PrecompSplit(str(tmp_path), "f30k_precomp", "test", img_dim=8)
    assert split.image_divisor == 5 and split.num_images == 2
    images = PrecompImageSet(split)
    assert len(images) == 2 and torch.equal(images[1]["image"], torch.from_numpy(features[1]))
    train = PrecompTrainDataset(split, encoder, seed=0, region_drop=0.0)
    assert torch.equal(train[7]["image"], torch.from_numpy(features[1]))  # caption 7 belongs to image 1


def test_precomp_one_row_per_caption(tmp_path, encoder):
    captions = [f"a blue cat {i}" for i in range(10)]
    features = write_precomp(tmp_path, "test", 10, captions)
    split = PrecompSplit(str(tmp_path), "f30k_precomp", "test", img_dim=8)
    assert split.image_divisor == 1 and split.num_images == 2
    assert torch.equal(PrecompImageSet(split)[1]["image"], torch.from_numpy(features[5]))  # row 5i
    train = PrecompTrainDataset(split, encoder, seed=0, region_drop=0.0)
    assert torch.equal(train[7]["image"], torch.from_numpy(features[7]))


def test_training_samples_are_a_function_of_seed_epoch_and_index(tmp_path, encoder):
    write_precomp(tmp_path, "train", 4, ["a red dog runs on the grass with a blue ball"] * 20, regions=36)
    split = PrecompSplit(str(tmp_path), "f30k_precomp", "train", img_dim=8)
    dataset = PrecompTrainDataset(split, encoder, seed=3, region_drop=0.2)
    first, again = dataset[5], dataset[5]
    assert torch.equal(first["image"], again["image"]) and first["ids"] == again["ids"]
    assert first["image"].shape[0] < 36                  # regions were dropped
    kept = [dataset[i]["image"].shape[0] for i in range(20)]
    assert 0.7 < np.mean(kept) / 36 < 0.9               # keep probability 0.8
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i]["image"][:1], first["image"][:1]) or dataset[i]["ids"] != first["ids"]
               for i in [5])


def test_captions_without_augmentation_are_the_standard_encoding(encoder):
    caption = "A child's red kite flies over the beach."
    assert encoder(caption) == encoder.tokenizer(caption)["input_ids"]
    assert encoder(caption)[0] == encoder.tokenizer.cls_token_id and encoder(caption)[-1] == encoder.tokenizer.sep_token_id


def test_word_augmentation_alters_whole_words_in_the_released_proportions(tiny_bert):
    tokenizer = load_tokenizer("bert", tiny_bert)
    encoder = BertCaptionEncoder(tokenizer, word_aug=1.0)   # alter every word
    caption = "kites"
    plain = tokenizer(caption, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(plain) == ["kite", "##s"]   # one word, two wordpieces
    outcomes = {"mask": 0, "random": 0, "delete": 0}
    rng = np.random.default_rng(0)
    for _ in range(2000):
        ids = encoder(caption, rng)[1:-1]
        if not ids:
            outcomes["delete"] += 1
        elif all(i == tokenizer.mask_token_id for i in ids):
            assert len(ids) == len(plain)
            outcomes["mask"] += 1
        else:
            assert len(ids) == len(plain)
            outcomes["random"] += 1
    assert abs(outcomes["mask"] / 2000 - 0.5) < 0.04
    assert abs(outcomes["random"] / 2000 - 0.1) < 0.03
    assert abs(outcomes["delete"] / 2000 - 0.4) < 0.04


def test_collate_pads_regions_and_ids():
    collate = Collate(pad_id=0)
    batch = collate([{"image": torch.ones(3, 2), "ids": [5, 6, 7], "index": 0, "skipped": 2},
                     {"image": torch.ones(1, 2), "ids": [5], "index": 4}])
    assert batch["skipped"] == 2 and batch["index"].tolist() == [0, 4]
    assert batch["images"].shape == (2, 3, 2) and batch["image_lengths"].tolist() == [3, 1]
    assert torch.all(batch["images"][1, 1:] == 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]] and batch["lengths"].tolist() == [3, 1]


def test_sampler_is_deterministic_resumable_and_splits_global_batches():
    sampler = ResumableBatchSampler(20, global_batch=4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == 5 and sorted(sum(full, [])) == list(range(20))
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == full[3:]
    ranks = [ResumableBatchSampler(20, global_batch=4, seed=1, rank=r, world=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    assert [a + b for a, b in zip(*(list(r) for r in ranks))] == full
    sampler.set_epoch(3)
    assert list(sampler) != full


def test_flickr_karpathy_json(tmp_path):
    data = {"images": [
        {"filename": "1.jpg", "split": "train", "sentences": [{"raw": "A Dog runs."}] * 5},
        {"filename": "2.jpg", "split": "test", "sentences": [{"raw": f"Cat {i}.."} for i in range(6)]},
    ]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    entries = load_karpathy_split("f30k", str(tmp_path), str(tmp_path), "test")
    assert entries == [(str(tmp_path / "2.jpg"), [f"cat {i}" for i in range(6)])]
    assert evaluation_entries(entries, "x")[0][1] == [f"cat {i}" for i in range(5)]


def test_coco_karpathy_json_paths(tmp_path):
    images = [{"file_name": "COCO_val2014_000000000042.jpg", "sentences": [{"raw": "A Man."}] * 5},
              {"file_name": "COCO_train2014_000000000007.jpg", "sentences": [{"raw": "Two Birds"}] * 5}]
    (tmp_path / "train_coco.json").write_text(json.dumps({"images": images}))
    entries = load_karpathy_split("coco", str(tmp_path), str(tmp_path), "train")
    assert entries[0] == (str(tmp_path / "val2014/COCO_val2014_000000000042.jpg"), ["a man."] * 5)
    assert entries[1][0] == str(tmp_path / "train2014/COCO_train2014_000000000007.jpg")


def test_caption_set_is_unaugmented(encoder):
    captions = CaptionSet(["a dog", "a cat"], encoder)
    assert captions[1]["ids"] == encoder("a cat") and captions[1]["index"] == 1


def test_precomp_split_pickles_without_its_features(tmp_path):
    import pickle
    features = write_precomp(tmp_path, "train", 50, [f"caption {i}" for i in range(250)], regions=36, dim=64)
    split = PrecompSplit(str(tmp_path), "f30k_precomp", "train", img_dim=64)
    payload = pickle.dumps(split)               # what a spawned DataLoader worker receives
    assert len(payload) < features.nbytes / 10
    assert torch.equal(pickle.loads(payload).features(7), torch.from_numpy(features[7]))
