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
from PIL import Image, ImageDraw, ImageFont

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


def region_features(scene: dict, prototypes: dict, regions: int, rng: np.random.Generator,
                    layout: list | None = None) -> np.ndarray:
    """A scene's regions; `layout`, when given, receives what each row shows, in row order: (object
    number, part) for the two regions of each object (part 0 the whole object, 1 its upper half),
    "scene" or "other". The rows are shuffled with the same draws either way."""
    rows = []
    for obj, color in scene["objects"]:
        for _ in range(2):
            rows.append(prototypes["object"][obj] + 0.5 * prototypes["color"][color])
    rows.append(prototypes["scene"][scene["scene"]])
    dim = prototypes["object"].shape[1]
    while len(rows) < regions:
        rows.append(rng.normal(size=dim))
    rows = np.stack(rows[:regions]) + 0.9 * rng.normal(size=(regions, dim))
    if layout is None:
        rng.shuffle(rows)
    else:   # the row numbers ride along as one more column: the same permutation, the same draws
        tagged = np.concatenate([rows, np.arange(regions, dtype=rows.dtype)[:, None]], axis=1)
        rng.shuffle(tagged)
        rows = np.ascontiguousarray(tagged[:, :-1])
        kinds = [(0, 0), (0, 1), (1, 0), (1, 1), "scene"] + ["other"] * regions
        layout.extend(kinds[int(origin)] for origin in tagged[:, -1])
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
        layouts = [[] for _ in scenes] if split == "test" else [None] * len(scenes)
        features = np.stack([region_features(scene, prototypes, regions, rng, layout)
                             for scene, layout in zip(scenes, layouts)])
        captions = []
        for scene in scenes:
            (o1, c1), (o2, c2) = scene["objects"]
            fields = {"o1": OBJECTS[o1], "c1": COLORS[c1], "o2": OBJECTS[o2], "c2": COLORS[c2],
                      "s": SCENES[scene["scene"]]}
            captions.extend(_five_captions(REGION_TEMPLATES, fields, rng))
        np.save(os.path.join(folder, f"{split}_ims.npy"), features)
        with open(os.path.join(folder, f"{split}_caps.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(captions) + "\n")
        if split == "test":
            write_scene_images(os.path.join(folder, f"{split}_ims"), scenes, layouts, seed)
        all_captions.extend(captions)
    return all_captions


SCENE_COLORS = {"beach": (238, 214, 175), "street": (150, 150, 155), "park": (120, 185, 110),
                "field": (190, 205, 120), "kitchen": (225, 215, 200), "river": (110, 160, 215)}
REGION_COLORS = {"red": (215, 35, 35), "blue": (35, 70, 215), "green": (30, 150, 60), "yellow": (240, 215, 40),
                 "black": (25, 25, 25), "white": (250, 250, 250), "brown": (130, 80, 40),
                 "orange": (245, 140, 30)}
SCENE_SIZE = (320, 240)


def write_scene_images(stem: str, scenes: list[dict], layouts: list[list], seed: int) -> None:
    """What the regions of `stem`.npy show, as a region extractor would leave it (the contract of
    tools/extract_regions.py): one rendered image per row in `stem`_images/, `stem`.json (format
    dimmatch-regions, version 1: each image's name, absolute path and size) and `stem`_boxes.npy
    (rows x regions x 4, x1 y1 x2 y2 in image pixels: each object's box and its upper half, the whole
    image for the scene region, small boxes elsewhere for the others). The positions come from their
    own generator, so the features and captions are those written without the images."""
    folder = f"{stem}_images"
    os.makedirs(folder, exist_ok=True)
    width, height = SCENE_SIZE
    rng = np.random.default_rng([seed, 29])
    try:
        font = ImageFont.load_default(size=16)
    except (OSError, TypeError, ValueError):       # Pillow without FreeType: its small bitmap font
        font = ImageFont.load_default()
    boxes = np.zeros((len(scenes), len(layouts[0]) if layouts else 0, 4), dtype=np.float32)
    images = []
    for row, (scene, layout) in enumerate(zip(scenes, layouts)):
        image = Image.new("RGB", SCENE_SIZE, SCENE_COLORS[SCENES[scene["scene"]]])
        draw = ImageDraw.Draw(image)
        objects = []
        for number, (obj, color) in enumerate(scene["objects"]):
            w, h = (int(v) for v in rng.integers(70, 120, size=2))
            left = int(rng.integers(10 + number * width // 2, max(11 + number * width // 2,
                                                                   (number + 1) * width // 2 - w - 10)))
            top = int(rng.integers(20, height - h - 10))
            box = (left, top, left + w, top + h)
            fill = REGION_COLORS[COLORS[color]]
            draw.rounded_rectangle(box, radius=min(w, h) // 4, fill=fill, outline=(40, 40, 40), width=2)
            ink = (0, 0, 0) if sum(fill) > 400 else (255, 255, 255)
            draw.text((left + 8, top + h // 2 - 4), OBJECTS[obj], fill=ink, font=font)
            objects.append(box)
        for region, kind in enumerate(layout):
            if kind == "scene":
                boxes[row, region] = (0, 0, width, height)
            elif kind == "other":
                x, y = rng.integers(0, width - 40), rng.integers(0, height - 30)
                w, h = rng.integers(20, 60), rng.integers(15, 45)
                boxes[row, region] = (x, y, min(width, x + w), min(height, y + h))
            else:
                left, top, right, bottom = objects[kind[0]]
                boxes[row, region] = (left, top, right, bottom if kind[1] == 0 else (top + bottom) / 2)
        name = f"{row:05d}.png"
        path = os.path.abspath(os.path.join(folder, name))
        image.save(path)
        images.append({"name": name, "path": path, "width": width, "height": height})
    np.save(f"{stem}_boxes.npy", boxes)
    with open(f"{stem}.json", "w", encoding="utf-8") as handle:
        json.dump({"format": "dimmatch-regions", "version": 1, "protocol": "demo scenes (demo/data.py)",
                   "regions": int(boxes.shape[1]), "images": images, "skipped": [],
                   "detector": {"source": "none: generated scenes, boxes where the objects are drawn",
                                "sha256": None},
                   "options": {"seed": seed, "size": list(SCENE_SIZE)}}, handle, indent=1)


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
