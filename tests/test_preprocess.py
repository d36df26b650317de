"""CLIP preprocessing: torchvision 'clip' semantics without torchvision."""

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.transforms import CLIP_MEAN, CLIP_STD, clip_preprocess


def normalised(value, channel):
    return (value / 255.0 - CLIP_MEAN[channel]) / CLIP_STD[channel]


def test_constant_image_statistics():
    image = Image.new("RGB", (300, 200), (200, 100, 50))
    pixels = clip_preprocess(image)
    assert pixels.shape == (3, 224, 224)
    for channel, value in enumerate((200, 100, 50)):
        assert pixels[channel].mean().item() == pytest.approx(normalised(value, channel), abs=1e-5)
        assert pixels[channel].std().item() < 1e-4


def test_centre_crop_uses_torchvision_rounding():
    # 227 x 224: no resize (short side is 224); torchvision crops from round(3 / 2) = 2
    columns = np.tile(np.arange(227, dtype=np.uint8), (224, 1))
    image = Image.fromarray(np.stack([columns, columns, columns], -1))
    pixels = clip_preprocess(image)
    assert pixels[0, 10, 0].item() == pytest.approx(normalised(2, 0), abs=1e-6)
    assert pixels[0, 10, 223].item() == pytest.approx(normalised(225, 0), abs=1e-6)


def test_chosen_pixels_of_a_two_colour_image():
    array = np.zeros((224, 448, 3), dtype=np.uint8)
    array[:, :224] = (255, 0, 0)
    array[:, 224:] = (0, 0, 255)
    pixels = clip_preprocess(Image.fromarray(array))   # crop starts at column 112
    assert pixels[0, 0, 0].item() == pytest.approx(normalised(255, 0), abs=1e-6)
    assert pixels[2, 0, 0].item() == pytest.approx(normalised(0, 2), abs=1e-6)
    assert pixels[2, 100, 223].item() == pytest.approx(normalised(255, 2), abs=1e-6)


def test_grayscale_is_converted_after_resizing():
    pixels = clip_preprocess(Image.new("L", (224, 260), 128))
    assert torch.allclose(pixels[0] * CLIP_STD[0] + CLIP_MEAN[0], pixels[1] * CLIP_STD[1] + CLIP_MEAN[1], atol=1e-6)


def test_same_as_transformers_pil_processor_where_crops_agree():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(200, 300, 3), dtype=np.uint8))  # crop offset 56 both ways
    theirs = CLIPImageProcessorPil()(image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(clip_preprocess(image), theirs, atol=1e-5)
