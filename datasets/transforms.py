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


HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images as 8-bit grey, scaled rather than clipped: PIL's own
    conversion clips them at 255, which turns almost every 16-bit image white. Integer images are
    taken as 16-bit (0..65535), float images as 0..1 when their maximum is at most 1, else 0..255."""
    if image.mode in HIGH_BIT_DEPTH:
        pixels = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels * 255.0 if pixels.max(initial=0.0) <= 1.0 else pixels
    else:
        return image
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def clip_preprocess(image: Image.Image, size: int = 224) -> torch.Tensor:
    """PIL image -> (3, size, size) float tensor."""
    image = to_8bit(image)
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


class ClipPreprocess:
    """`clip_preprocess` at one size, as an object a data-loader worker can receive (pickled)."""

    def __init__(self, size: int = 224):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return clip_preprocess(image, self.size)
