"""ESL level aggregation against the formulas of docs/MODELS.md (d=32, k=2)."""

import pytest
import torch

from errors import ConfigError
from modules.levels import ESLLevels, level_widths, resolve_num_levels
from reference import adaptive_levels, heuristic_levels, top2_mask



pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("chain_normalized", [True, False])
def test_heuristic_levels_match_four_summed_convolutions(chain_normalized):
    torch.manual_seed(0)
    levels = ESLLevels(32, 2, resolve_num_levels(32, 2), "heuristic", chain_normalized)
    x = torch.nn.functional.normalize(torch.randn(3, 5, 32), dim=-1)
    expected = heuristic_levels(x, [conv.weight for conv in levels.kernels], chain_normalized)
    assert levels.widths == [32, 16, 8, 4, 2, 1]
    assert torch.allclose(levels(x), expected, atol=1e-10)


@pytest.mark.parametrize("chain_normalized", [True, False])
def test_adaptive_levels_match_top2_masks(chain_normalized):
    torch.manual_seed(1)
    levels = ESLLevels(32, 2, 4, "adaptive", chain_normalized)
    x = torch.randn(7, 32)
    expected = adaptive_levels(x, [mask.weight for mask in levels.masks], chain_normalized)
    assert torch.allclose(levels(x), expected, atol=1e-10)
    assert levels(x).shape == (7, 32 + 16 + 8 + 4 + 2)


def test_adaptive_mask_keeps_exactly_the_top_two_per_row_ties_included():
    levels = ESLLevels(8, 2, 1, "adaptive")
    with torch.no_grad():
        levels.masks[0].weight.copy_(torch.tensor([
            [1.0, 3.0, 3.0, 2.0, 0.0, 0.0, 0.0, 0.0],   # tie at the top: both 3s kept
            [5.0, 4.0, 4.0, 1.0, 0.0, 0.0, 0.0, 0.0],   # tie at second place: 5, 4, 4 kept
            [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0],  # signed: the two largest
            [0.5, 0.1, 0.9, 0.2, 0.3, 0.4, 0.6, 0.7],
        ]))
    masks = levels.selective_masks()[0]
    assert (masks != 0).sum(1).tolist() == [2, 3, 2, 2]
    assert (masks[2] != 0).nonzero().flatten().tolist() == [0, 1]
    assert (masks[3] != 0).nonzero().flatten().tolist() == [2, 7]
    assert torch.allclose(masks, top2_mask(levels.masks[0].weight))


def test_gradients_reach_every_level_parameter():
    for strategy in ("heuristic", "adaptive"):
        levels = ESLLevels(32, 2, 5, strategy)
        levels(torch.randn(4, 32)).pow(2).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in levels.parameters())


def test_number_of_levels_follows_the_width():
    assert resolve_num_levels(512, 2) == 8            # released: 512 ... 2
    assert level_widths(512, 2, 8)[-1] == 2 and sum(level_widths(512, 2, 8)) == 1022
    assert resolve_num_levels(1024, 2) == 8
    assert resolve_num_levels(32, 2) == 5
    assert resolve_num_levels(96, 2) == 5             # 96 = 3 * 2**5
    with pytest.raises(ConfigError, match=r"divisible by kernel_size\*\*8=256, but embed_size is 32"):
        resolve_num_levels(32, 2, 8)
    with pytest.raises(ConfigError, match="at least 2"):
        resolve_num_levels(32, 1)
