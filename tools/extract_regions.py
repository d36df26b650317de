"""BUTD region features of your own images, for X-Dim and ESL-region (plain PyTorch, no torchvision).

    python tools/extract_regions.py --detector detectors/frcnn-vg --images photos/ --out photos.npy
    python tools/extract_regions.py --detector DIR --images list.txt --out feats.npy --protocol lxmert --regions 10
    torchrun --standalone --nproc_per_node 4 tools/extract_regions.py --detector DIR --images photos/ --out photos.npy

--detector: a folder with config.yaml and pytorch_model.bin (unc-nlp/frcnn-vg-finetuned), or that hub
name once it is in the HuggingFace cache. --images: a folder (its image files, sorted by name) or a
text file of paths, one a line (a path that does not exist is refused before any work; an image that
cannot be decoded is skipped with a warning). Writes FEATS.npy (N x R x 2048 float32, the `{split}_ims.npy` layout
of test.py), FEATS_boxes.npy (N x R x 4: x1 y1 x2 y2 in the upright original's pixels) and FEATS.json
(image names in row order, sizes, skipped images, the detector's content hash, the options).
--protocol butd (default) is the Caffe extraction that made SCAN's features; lxmert is LXMERT's
reference extractor (docs/MODELS.md). A stopped run (any signal) continues with --resume.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from detector import command  # noqa: E402


def build_parser():
    return command.build_parser(__doc__)


def main(argv=None):
    """The options, outputs and work folder are checked, then the regions extracted
    (detector.command.extract); the record written as FEATS.json (None on the other ranks)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    return command.extract(args)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
