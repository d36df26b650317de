"""The heads' own explanations (what tools/serve.py shows): the parts sum to the score, the score is
`score`'s, and the attention is a distribution over regions per word."""

import pytest
import torch

from modules.heads import CosineHead, ESLClipHead, ESLRegionHead, XDimHead
from modules.levels import resolve_num_levels


def heads():
    torch.manual_seed(0)
    levels = resolve_num_levels(16, 2, None)
    return {"xdim": XDimHead(16), "esl_h": ESLRegionHead(16, 2, levels, "heuristic"),
            "esl_a": ESLRegionHead(16, 2, levels, "adaptive"), "esl_clip": ESLClipHead(16, 2, levels, "heuristic"),
            "cosine": CosineHead("mean")}


@pytest.mark.parametrize("name", ["xdim", "esl_h", "esl_a", "esl_clip", "cosine"])
def test_parts_sum_to_the_score_and_attention_is_per_word(name, float64):
    head = heads()[name].double().eval()
    torch.manual_seed(1)
    local = name not in ("esl_clip",)
    images = torch.randn(3, 5, 16) if local else torch.randn(3, 16)
    captions = torch.randn(2, 4, 16) if local else torch.randn(2, 16)
    image_lengths = torch.full((3,), 5) if local else None
    caption_lengths = torch.tensor([4, 3]) if local else None
    with torch.inference_mode():
        images = head.prepare_images(images, image_lengths)
        captions = head.prepare_captions(captions, caption_lengths)
        if name == "cosine":
            image_lengths = caption_lengths = None        # pooled: global vectors
        scores = head.score(images, image_lengths, captions, caption_lengths)
        explained = head.explain(images, image_lengths, captions, caption_lengths)
    assert torch.allclose(explained["score"], scores)
    assert torch.allclose(explained["parts"].sum(-1), scores, atol=1e-10)
    assert explained["parts"].shape[-1] == len(explained["part_names"]) > 1
    if name in ("xdim", "esl_h", "esl_a"):
        attention = explained["attention"]
        assert attention.shape == (3, 2, 4, 5)
        assert torch.allclose(attention[:, 0].sum(-1), torch.ones(3, 4, dtype=attention.dtype))
    else:
        assert explained["attention"] is None
