"""Sharded encode-once scoring equals scoring the whole matrix at once."""

import numpy as np
import pytest
import torch

from dimmatch.evaluation.scoring import EncodedItems, score_all
from dimmatch.modules.heads import CosineHead, ESLRegionHead, XDimHead


def packed(features, lengths):
    if features.dim() == 2:  # pooled heads prepare one vector per item
        return EncodedItems([features], None)
    return EncodedItems([features[i, :n] for i, n in enumerate(lengths)], [torch.tensor([n]) for n in lengths])


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
    image_items = packed(prepared_images, region_lengths.tolist())
    caption_items = packed(prepared_captions, lengths.tolist())
    if prepared_captions.dim() == 3:
        assert image_items.dense is not None and caption_items.dense is None
    for mem_gb in (1.0, 1e-7):  # one shard per caption chunk / one image per shard
        sims = score_all(head, image_items, caption_items, torch.device("cpu"), mem_gb=mem_gb, progress=False)
        assert np.allclose(sims, expected.numpy(), atol=1e-5)


def test_packed_gather_pads_each_shard_to_its_own_longest():
    features = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3) + 1
    items = packed(features, [4, 2])
    block, lengths = items.gather(torch.tensor([1]), torch.device("cpu"))
    assert block.shape == (1, 2, 3) and lengths.tolist() == [2]
    block, _ = items.gather(torch.tensor([1, 0]), torch.device("cpu"))
    assert torch.equal(block[0, :2], features[1, :2]) and torch.all(block[0, 2:] == 0)
    assert torch.equal(block[1], features[0])
