"""Images for the detector: listed from a folder or a file, decoded to 8-bit RGB arrays.

EXIF orientation is applied (boxes are in the pixels of the upright image); grayscale and palette
images become three equal channels; CMYK is converted by PIL; 16-bit and float images are scaled
to 8 bits (not clipped); an alpha channel is dropped. A file that cannot be decoded (empty,
truncated, not an image) or is larger than PIL's decompression-bomb limit raises `Unreadable`,
which the extractor turns into one warning and a skipped row. A line of a list of paths naming a
file that does not exist is a mistake in the list, refused before any work (the list and its line
named).
"""

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from datasets.transforms import to_8bit
from errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class Unreadable(Exception):
    """An image that is skipped, with the reason."""


def list_images(source: str, option: str = "--images") -> list[tuple[str, str]]:
    """(name, absolute path) of each image: a folder's image files sorted by name (recursively,
    names relative to it), or the lines of a text file (paths relative to the file's folder, each
    one a file that exists)."""
    if os.path.isdir(source):
        found = []
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            for name in files:
                if name.lower().endswith(EXTENSIONS) and not name.startswith("."):
                    path = os.path.join(folder, name)
                    found.append((os.path.relpath(path, source), os.path.abspath(path)))
        found.sort(key=lambda item: item[0])
        if not found:
            raise DataError(f"{option} {source} holds no image files ({', '.join(EXTENSIONS)})")
        return found
    if not os.path.isfile(source):
        raise DataError(f"{option} {source} does not exist (give a folder of images or a text file of paths)")
    try:
        with open(source, encoding="utf-8-sig") as handle:
            lines = [(number, line.strip()) for number, line in enumerate(handle, start=1)]
    except UnicodeDecodeError:
        raise DataError(f"{option} {source} is not a UTF-8 text file of image paths (one a line)") from None
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise DataError(f"{option} {source} lists no images (one path a line)")
    base = os.path.dirname(os.path.abspath(source))
    out = [(line, os.path.abspath(os.path.join(base, os.path.expanduser(line)))) for _, line in lines]
    for (number, line), (_, path) in zip(lines, out):     # a typo in the list: before any work, not a skip
        if not os.path.exists(path):
            if number == 1 and line[:1] in "{[":
                raise DataError(f"{option} {source} is not a list of image paths (one a line): it looks like JSON "
                                "(an annotation file? tools/karpathy_to_precomp.py reads those)")
            shown = line if len(line) <= 200 else line[:200] + "..."
            relative = not os.path.isabs(os.path.expanduser(line))
            where = f" (read as {path if len(path) <= 300 else shown}: relative to the list's folder)" if relative \
                else ""
            raise DataError(f"{option} {source}:{number}: {shown} does not exist{where}")
    seen = set()
    for name, path in out:
        if path in seen:
            raise DataError(f"{option} {source} lists {name} twice; every row must be one image")
        seen.add(path)
    return out


def read_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB, upright."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Unreadable(f"too large to decode safely ({exc.__class__.__name__}: over "
                         f"{Image.MAX_IMAGE_PIXELS} pixels)") from None
    except FileNotFoundError:
        raise Unreadable("file not found") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unreadable(f"not a readable image ({text})") from None
    if image.width < 1 or image.height < 1:
        raise Unreadable("has no pixels")
    image = to_8bit(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)
