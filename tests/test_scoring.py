"""Sharded encode-once scoring equals scoring the whole matrix at once."""

import numpy as np
import pytest
import torch

from evaluation.scoring import EncodedItems, score_all
from modules.heads import CosineHead, ESLRegionHead, XDimHead


@pytest.mark.parametrize("head", [XDimHead(16), ESLRegionHead(16, 2, 3, "adaptive"), CosineHead("max")])
def test_tiny_memory_budget_gives_the_same_matrix(head):
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(7, 5, 16), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(35, 9, 16), dim=-1)
    lengths = torch.randint(2, 10, (35,))
    region_lengths = torch.full((7,), 5)
    with torch.no_grad():
        prepared_images = head.prepare_images(images, region_lengths)
        prepared_captions = head.prepare_captions(captions, lengths)
        expected = head.score(prepared_images, region_lengths, prepared_captions, lengths)
    image_items = EncodedItems.from_padded(prepared_images, region_lengths)
    caption_items = EncodedItems.from_padded(prepared_captions, lengths)
    if prepared_captions.dim() == 3:
        assert image_items.dense is not None and caption_items.dense is None
    for mem_gb in (1.0, 1e-7):  # one shard per caption chunk / one image per shard
        sims = score_all(head, image_items, caption_items, torch.device("cpu"), mem_gb=mem_gb, progress=False)
        assert np.allclose(sims, expected.numpy(), atol=1e-5)


def test_packed_gather_pads_each_shard_to_its_own_longest():
    features = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3) + 1
    items = EncodedItems.from_padded(features, torch.tensor([4, 2]))
    block, lengths = items.gather(torch.tensor([1]), torch.device("cpu"))
    assert block.shape == (1, 2, 3) and lengths.tolist() == [2]
    block, _ = items.gather(torch.tensor([1, 0]), torch.device("cpu"))
    assert torch.equal(block[0, :2], features[1, :2]) and torch.all(block[0, 2:] == 0)
    assert torch.equal(block[1], features[0])


def test_evaluation_encodes_each_image_and_caption_once(image_data, tiny_clip):
    """N images and 5N captions: exactly N + 5N items go through the encoders."""
    from conftest import make_config
    from datasets.captions import load_tokenizer
    from evaluation.protocol import compute_split_scores
    from pairs import build_model, load_eval_split, pair_of

    root, images, _ = image_data
    cfg = make_config(encoders="clip", sim_head="esl_h", embed_size=32, kernel_size=2, esl_levels=5, cosine_pool="mean",
                 clip_path=tiny_clip, image_size=32, dataset="f30k", image_root=images, ann_path=root)
    model = build_model(cfg)
    encoded = {"images": 0, "captions": 0}
    for side, method in (("images", "encode_images"), ("captions", "encode_captions")):
        original = getattr(model.encoders, method)

        def counting(inputs, lengths, original=original, side=side):
            encoded[side] += inputs.shape[0]
            return original(inputs, lengths)
        setattr(model.encoders, method, counting)
    encoder = pair_of(cfg).caption_encoder(cfg, load_tokenizer("clip", tiny_clip), model.text_tokens()["positions"])
    sims, info = compute_split_scores(model, load_eval_split(cfg, "test"), encoder, torch.device("cpu"),
                                      batch_size=4, workers=0, progress=False)
    assert sims.shape == (10, 50)
    assert encoded == {"images": 10, "captions": 50} == {"images": info["images_encoded"],
                                                           "captions": info["captions_encoded"]}
