"""CLIP image preprocessing, exactly as the released ESL-CLIP pipeline (torchvision 'clip').

Resize the shorter side to 224 with PIL bicubic (longer side int(224 * long / short)),
centre-crop 224 with torchvision's offsets round((size - 224) / 2), convert to RGB after
cropping, scale to [0, 1] and normalise with CLIP's mean/std. transformers'
CLIPImageProcessor is not used because it places the crop at floor((size - 224) / 2), one
pixel away from torchvision for a quarter of image sizes, and converts before resizing.
"""

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """PIL image -> (3, size, size) float tensor."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    if short != size:
        new_long = int(size * long / short)
        new_size = (size, new_long) if width <= height else (new_long, size)
        image = image.resize(new_size, Image.BICUBIC)
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std
