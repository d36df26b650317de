"""Heads against the loop-over-pairs references of docs/MODELS.md, shapes and gradients."""

import math

import pytest
import torch

from modules.heads import CosineHead, ESLClipHead, ESLRegionHead, XDimHead, build_head
from modules.heads.base import LOCAL
import reference as ref


pytestmark = pytest.mark.usefixtures("float64")


def local_batch(n_images=3, n_regions=5, dim=16, lengths=(4, 2, 6, 3)):
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n_images, n_regions, dim), dim=-1)
    captions = torch.nn.functional.normalize(torch.randn(len(lengths), max(lengths), dim), dim=-1)
    return images, captions, torch.tensor(lengths)


def perturb(module, scale=0.3, seed=1):
    """Move every parameter away from its init so that no term vanishes by symmetry."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def test_xdim_matches_the_dense_diagonal_loop():
    head = XDimHead(16)
    with torch.no_grad():
        head.mask_temperature.fill_(1.0)  # keep the mask away from 0/1 saturation
    images, captions, lengths = local_batch()
    got = head(images, None, captions, lengths)
    expected = ref.xdim_scores(head.dependency_logits, head.threshold_scale, head.mask_temperature,
                               head.log_inv_tau, images, [captions[c, :n] for c, n in enumerate(lengths)])
    assert got.shape == (3, 4)
    assert torch.allclose(got, expected, atol=1e-10)


def test_xdim_padding_words_do_not_change_scores():
    head = XDimHead(16)
    images, captions, lengths = local_batch()
    padded = torch.cat([captions, torch.randn(4, 3, 16)], dim=1)  # garbage after each caption's end
    assert torch.allclose(head(images, None, captions, lengths), head(images, None, padded, lengths), atol=1e-12)


def test_xdim_gradients_reach_every_parameter():
    head = XDimHead(16)
    with torch.no_grad():
        head.mask_temperature.fill_(1.0)
    images, captions, lengths = local_batch()
    images.requires_grad_(True)
    head(images, None, captions, lengths).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert images.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", ["heuristic", "adaptive"])
def test_esl_region_matches_the_pair_loop(strategy):
    head = ESLRegionHead(16, 2, 3, strategy)
    perturb(head)
    images, captions, lengths = local_batch()
    got = head(images, None, captions, lengths)
    image_levels = head.image_levels(images)
    caption_levels = [head.text_levels(captions[c, :n]) for c, n in enumerate(lengths)]
    matrices = [norm(m) for m, norm in zip(head.bilinear, head.bilinear_norms)]
    if strategy == "heuristic":
        coefficients = ref.level_coefficients(head.level_weights, head.sigma, head.lam, sigmoid=False)
    else:
        coefficients = head.level_weights
    expected = ref.esl_region_scores(image_levels, caption_levels, head.widths, coefficients, matrices,
                                     head.log_inv_tau)
    assert torch.allclose(got, expected, atol=1e-10)


def test_esl_region_levels_follow_the_spec():
    head = ESLRegionHead(16, 2, 3, "heuristic")
    perturb(head)
    x = torch.randn(2, 16)
    assert torch.allclose(head.image_levels(x), ref.heuristic_levels(x, [k.weight for k in head.image_levels.kernels]))
    assert torch.allclose(head.text_levels(x), ref.heuristic_levels(
        x, [k.weight for k in head.text_levels.kernels], chain_normalized=False))


def test_esl_h_and_a_differ_only_in_levels_and_level_weights():
    """Same level features and parameters: with equal |w_l| the H exponent is exp(0) = 1 and
    H scores equal A scores; once the weights differ, H reweights the levels and A does not."""
    torch.manual_seed(3)
    h, a = ESLRegionHead(16, 2, 3, "heuristic"), ESLRegionHead(16, 2, 3, "adaptive")
    shared_levels = h.image_levels, h.text_levels
    a.image_levels, a.text_levels = shared_levels
    a.bilinear, a.bilinear_norms = h.bilinear, h.bilinear_norms
    images, captions, lengths = local_batch()
    assert torch.allclose(h(images, None, captions, lengths), a(images, None, captions, lengths), atol=1e-12)
    with torch.no_grad():
        weights = torch.tensor([0.3, -0.1, 0.05, 0.2])
        h.level_weights.copy_(weights)
        a.level_weights.copy_(weights)
    assert not torch.allclose(h(images, None, captions, lengths), a(images, None, captions, lengths))
    assert not hasattr(a, "sigma") and not hasattr(a, "lam")
    expected = ref.level_coefficients(weights, h.sigma, h.lam, sigmoid=False)
    assert torch.allclose(h.coefficients(), expected) and torch.equal(a.coefficients(), a.level_weights)


def test_esl_region_init_values():
    head = ESLRegionHead(32, 2, 4, "heuristic")
    assert torch.all(head.level_weights == 0.1) and head.level_weights.shape == (5,)
    assert head.sigma.item() == 0.0 and head.lam.item() == 3.0
    assert head.log_inv_tau.item() == pytest.approx(math.log(1 / 0.07))
    assert [tuple(m.shape) for m in head.bilinear] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert head.bilinear_norms[0].eps == 1e-8


@pytest.mark.parametrize("strategy", ["heuristic", "adaptive"])
def test_esl_clip_matches_the_pair_loop_and_encode_once(strategy):
    head = ESLClipHead(32, 2, 4, strategy)
    perturb(head, scale=0.2)
    torch.manual_seed(4)
    images, captions = torch.randn(5, 32) * 3, torch.randn(7, 32) * 2  # un-normalised CLIP embeddings
    got = head(images, None, captions, None)
    image_levels = head.image_levels(images / images.norm(dim=-1, keepdim=True))
    caption_levels = head.text_levels(captions / captions.norm(dim=-1, keepdim=True))
    coefficients = ref.level_coefficients(head.level_weights, head.sigma, head.lam, sigmoid=True)
    expected = ref.esl_clip_scores(image_levels, caption_levels, head.widths, coefficients, list(head.bilinear))
    assert torch.allclose(got, expected, atol=1e-10)
    # encode once: prepared features of subsets give the same block as the full matrix
    block = head.score(head.prepare_images(images[1:3], None), None, head.prepare_captions(captions[4:], None), None)
    assert torch.allclose(block, got[1:3, 4:], atol=1e-12)


def test_esl_clip_init_values():
    head = ESLClipHead(512, 2, 8, "heuristic")
    assert sum(head.widths) == 1022 and head.level_weights.shape == (9,)
    assert head.sigma.item() == -1.0 and head.lam.item() == 4.0
    assert all(torch.equal(m, torch.eye(m.shape[0])) for m in head.bilinear)


def test_cosine_pools_valid_tokens_only():
    images, captions, lengths = local_batch()
    for pool in ("mean", "max"):
        head = CosineHead(pool)
        sims = head(images, torch.tensor([5, 5, 5]), captions, lengths)
        caption = captions[1, :2]
        pooled = caption.mean(0) if pool == "mean" else caption.max(0).values
        image = images[0].mean(0) if pool == "mean" else images[0].max(0).values
        expected = torch.nn.functional.cosine_similarity(pooled, image, dim=0)
        assert sims[0, 1].item() == pytest.approx(expected.item(), abs=1e-6)  # l2norm's eps vs cosine's
    global_sims = CosineHead()(images[:, 0], None, captions[:, 0], None)
    assert torch.allclose(global_sims, images[:, 0] @ captions[:, 0].t(), atol=1e-6)


def test_build_head_picks_the_esl_form_from_the_features():
    from conftest import make_config
    assert isinstance(build_head(make_config(sim_head="esl_h", embed_size=32, esl_levels=5), LOCAL, "pair"),
                      ESLRegionHead)
    assert isinstance(build_head(make_config(sim_head="esl_a", embed_size=32, esl_levels=5), "global", "pair"),
                      ESLClipHead)
    assert isinstance(build_head(make_config(sim_head="xdim", embed_size=32), LOCAL, "pair"), XDimHead)


@pytest.mark.parametrize("strategy", ["heuristic", "adaptive"])
def test_esl_region_gradients_are_finite_with_padded_captions(strategy):
    head = ESLRegionHead(16, 2, 4, strategy)  # down to width-1 levels
    images, captions, lengths = local_batch(lengths=(2, 9, 3, 5))
    head(images, None, captions, lengths).sum().backward()
    for name, p in head.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("saved_bytes", [0, 2**30])
def test_xdim_training_path_equals_the_straightforward_computation(float64, monkeypatch, saved_bytes):
    """The blocked training scores (word scores from x . g and x D^T D x^T, backward written out)
    give the scores and gradients of the direct formula (every parameter and both inputs), with
    several blocks, recomputed under checkpointing (no saved-bytes budget) or kept."""
    torch.manual_seed(4)
    head = XDimHead(16)
    images = torch.nn.functional.normalize(torch.randn(5, 4, 16), dim=-1).requires_grad_(True)
    captions = torch.nn.functional.normalize(torch.randn(6, 7, 16), dim=-1).requires_grad_(True)
    lengths = torch.tensor([7, 3, 5, 2, 7, 4])
    monkeypatch.setattr(XDimHead, "TRAIN_BLOCK_BYTES", 6 * 7 * (4 * 16 + 12) * 8 * 2)   # blocks of 2 images
    monkeypatch.setattr(XDimHead, "TRAIN_SAVED_BYTES", saved_bytes)
    weights = torch.randn(5, 6)

    def scores_and_grads(function):
        for tensor in (images, captions, *head.parameters()):
            tensor.grad = None
        scores = function()
        (scores * weights).sum().backward()
        return scores.detach(), [t.grad.clone() for t in (images, captions, *head.parameters())]

    direct, direct_grads = scores_and_grads(lambda: head.score(images, None, captions, lengths))
    blocked, blocked_grads = scores_and_grads(lambda: head(images, None, captions, lengths))
    assert torch.allclose(blocked, direct, rtol=1e-10, atol=1e-12)
    for ours, expected in zip(blocked_grads, direct_grads):
        assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(head(images, None, captions, lengths), direct)
