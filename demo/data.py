"""Small datasets with learnable structure, written in the real on-disk formats.

Region set (`<root>/f30k_precomp/{train,dev,test}_{ims.npy,caps.txt}`): every image is a
scene with two coloured objects. Each object contributes a few regions drawn around its
object prototype plus its colour prototype; the scene adds background regions; the rest are
distractors. Its five captions are different English sentences naming the objects, colours
and scene, so images that share objects (in other colours) are hard negatives.

Raw-image set (`<root>/images/*.jpg` + `<root>/dataset_flickr30k.json`, Karpathy format):
two coloured shapes at two positions on a plain background, captioned like "a red circle
left of a blue square".

Everything is a function of the seed.
"""

import json
import os

import numpy as np
from PIL import Image, ImageDraw

OBJECTS = ["dog", "cat", "horse", "bird", "man", "woman", "child", "car", "bicycle", "boat", "ball", "tree",
           "kite", "bench"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange"]
SCENES = ["beach", "street", "park", "field", "kitchen", "river"]
REGION_TEMPLATES = [
    "a {c1} {o1} and a {c2} {o2} at the {s}",
    "there is a {c1} {o1} next to a {c2} {o2}",
    "a {c2} {o2} near a {c1} {o1} in the {s}",
    "the {s} has a {c1} {o1} in it",
    "{c1} {o1} with a {c2} {o2}",
    "a photo of a {c1} {o1} in the {s}",
    "someone sees a {o1} that is {c1} and a {o2} that is {c2}",
    "in the {s} a {c2} {o2} is close to a {o1}",
]

SHAPES = ["circle", "square", "triangle", "cross"]
SHAPE_COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 210, 30),
                "purple": (140, 40, 170), "white": (245, 245, 245)}
IMAGE_TEMPLATES = [
    "a {c1} {s1} left of a {c2} {s2}",
    "a {c2} {s2} to the right of a {c1} {s1}",
    "a {c1} {s1} and a {c2} {s2}",
    "there is a {c1} {s1} on the left and a {s2} on the right",
    "two shapes: a {c2} {s2} and a {c1} {s1}",
    "the {s1} on the left is {c1}",
]


def _five_captions(templates, fields: dict, rng: np.random.Generator) -> list[str]:
    chosen = rng.choice(len(templates), size=5, replace=False)
    return [templates[i].format(**fields) for i in chosen]


def region_scenes(count: int, rng: np.random.Generator) -> list[dict]:
    scenes = []
    for _ in range(count):
        o1, o2 = rng.choice(len(OBJECTS), size=2, replace=False)
        c1, c2 = rng.choice(len(COLORS), size=2)
        scenes.append({"objects": [(int(o1), int(c1)), (int(o2), int(c2))], "scene": int(rng.integers(len(SCENES)))})
    return scenes


def region_features(scene: dict, prototypes: dict, regions: int, rng: np.random.Generator) -> np.ndarray:
    rows = []
    for obj, color in scene["objects"]:
        for _ in range(2):
            rows.append(prototypes["object"][obj] + 0.5 * prototypes["color"][color])
    rows.append(prototypes["scene"][scene["scene"]])
    dim = prototypes["object"].shape[1]
    while len(rows) < regions:
        rows.append(rng.normal(size=dim))
    rows = np.stack(rows[:regions]) + 0.9 * rng.normal(size=(regions, dim))
    rng.shuffle(rows)
    return np.maximum(rows, 0).astype(np.float32)  # BUTD features are ReLU outputs


def write_region_dataset(root: str, sizes: dict | None = None, regions: int = 12, dim: int = 256,
                         seed: int = 0) -> list[str]:
    """Writes `<root>/f30k_precomp`; returns every caption (for building vocabularies)."""
    sizes = sizes or {"train": 2000, "dev": 100, "test": 100}
    rng = np.random.default_rng(seed)
    prototypes = {"object": rng.normal(size=(len(OBJECTS), dim)), "color": rng.normal(size=(len(COLORS), dim)),
                  "scene": rng.normal(size=(len(SCENES), dim))}
    folder = os.path.join(root, "f30k_precomp")
    os.makedirs(folder, exist_ok=True)
    all_captions = []
    for split, count in sizes.items():
        scenes = region_scenes(count, rng)
        features = np.stack([region_features(scene, prototypes, regions, rng) for scene in scenes])
        captions = []
        for scene in scenes:
            (o1, c1), (o2, c2) = scene["objects"]
            fields = {"o1": OBJECTS[o1], "c1": COLORS[c1], "o2": OBJECTS[o2], "c2": COLORS[c2],
                      "s": SCENES[scene["scene"]]}
            captions.extend(_five_captions(REGION_TEMPLATES, fields, rng))
        np.save(os.path.join(folder, f"{split}_ims.npy"), features)
        with open(os.path.join(folder, f"{split}_caps.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(captions) + "\n")
        all_captions.extend(captions)
    return all_captions


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple, color: tuple) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=color)
    else:
        third_w, third_h = (right - left) / 3, (bottom - top) / 3
        draw.rectangle((left + third_w, top, right - third_w, bottom), fill=color)
        draw.rectangle((left, top + third_h, right, bottom - third_h), fill=color)


def write_image_dataset(root: str, sizes: dict | None = None, image_size: int = 64, seed: int = 0) -> list[str]:
    """Writes `<root>/images/*.jpg` and `<root>/dataset_flickr30k.json`; returns every caption."""
    sizes = sizes or {"train": 600, "val": 50, "test": 50}
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    color_names = list(SHAPE_COLORS)
    images, all_captions = [], []
    for split, count in sizes.items():
        for _ in range(count):
            s1, s2 = rng.choice(len(SHAPES), size=2)
            c1, c2 = rng.choice(len(color_names), size=2, replace=False)
            background = tuple(int(v) for v in rng.integers(60, 120, size=3))
            image = Image.new("RGB", (image_size, image_size), background)
            draw = ImageDraw.Draw(image)
            half, margin = image_size // 2, image_size // 10
            jitter = rng.integers(-margin // 2, margin // 2 + 1, size=4)
            draw_shape(draw, SHAPES[s1], (margin + jitter[0], half - 2 * margin + jitter[1],
                                          half - margin + jitter[0], half + 2 * margin + jitter[1]),
                       SHAPE_COLORS[color_names[c1]])
            draw_shape(draw, SHAPES[s2], (half + margin + jitter[2], half - 2 * margin + jitter[3],
                                          image_size - margin + jitter[2], half + 2 * margin + jitter[3]),
                       SHAPE_COLORS[color_names[c2]])
            filename = f"{len(images):05d}.jpg"
            image.save(os.path.join(root, "images", filename), quality=95)
            fields = {"s1": SHAPES[s1], "c1": color_names[c1], "s2": SHAPES[s2], "c2": color_names[c2]}
            captions = _five_captions(IMAGE_TEMPLATES, fields, rng)
            all_captions.extend(captions)
            images.append({"filename": filename, "split": split,
                           "sentences": [{"raw": caption + "."} for caption in captions]})
    with open(os.path.join(root, "dataset_flickr30k.json"), "w", encoding="utf-8") as handle:
        json.dump({"images": images, "dataset": "flickr30k"}, handle)
    return all_captions
