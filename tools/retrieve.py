"""Retrieval with a trained model on your own collection: index it once, then query it in two stages.

    python tools/retrieve.py index --checkpoint runs/x/model_best --images photos/ --out photos.index
    python tools/retrieve.py index --checkpoint xdim.pth --regions feats.npy --out feats.index [--shortlist cos.pth]
    python tools/retrieve.py text --index photos.index --query "a dog on a beach" --query "two cyclists" --top 5
    python tools/retrieve.py image --index photos.index --captions captions.txt --item 3 --top 5
    python tools/retrieve.py export --index photos.index --captions captions.txt --out features.npz

`index` encodes the collection once, in chunks: the head's prepared image features go to a
memory-mapped file (fp16 by default), the global vectors of the first stage to a FAISS index (the
model's own, exact for ESL-CLIP and cosine heads and pooled features for X-Dim and ESL-region, or
those of a --shortlist checkpoint). A text query is encoded, shortlisted to --rerank_k images by the
global vectors, and those images are re-ranked by the head, reading only their rows; --exhaustive
scores every image with the head instead. The index records the content hash of its checkpoints;
a query loads them from where they were (or --checkpoint / --shortlist) and refuses one whose content
differs. `image` ranks the captions of a file for an image of the index; `export` writes the
features (and caption features, with --captions) as .npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from config.parsers import Parser, add_schema_options  # noqa: E402
from errors import ConfigError  # noqa: E402
from retrieval.search import INDEX_KINDS  # noqa: E402

DTYPES = ("fp16", "fp32")   # retrieval.collection.DTYPES, whose module imports torch (a test checks they agree)


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    index = sub.add_parser("index", help="encode a collection once")
    index.add_argument("--checkpoint", required=True)
    index.add_argument("--images", help="folder of images (models on raw images, e.g. ESL-CLIP)")
    index.add_argument("--regions", help="BUTD feature file, images x regions x dim (region models)")
    index.add_argument("--detector", help="region models indexing --images: the detector that extracts their "
                                          "regions first (tools/extract_regions.py), kept as OUT.regions.npy")
    index.add_argument("--protocol", default="butd", choices=("butd", "lxmert"), help="with --detector")
    index.add_argument("--shortlist", default=None, help="a checkpoint whose global embeddings shortlist (a cosine "
                                                          "model of the same collection kind)")
    index.add_argument("--dtype", default="fp16", choices=DTYPES,
                       help="of the stored head features (fp16 halves the disk and the reads)")
    index.add_argument("--index_type", default="flat", choices=INDEX_KINDS,
                       help="FAISS index of the global vectors: flat = exact; ivf, hnsw = approximate, faster "
                            "on millions of images")
    index.add_argument("--out", required=True, help="the index folder to write (NAME.index)")
    text = sub.add_parser("text", help="top-k images of the index for text queries")
    text.add_argument("--index", required=True)
    text.add_argument("--query", action="append", required=True, help="a caption; repeat for several")
    add_schema_options(text, text, ("rerank_k",), rerank_k={"default": 100, "help": "images shortlisted per query "
                                                                                  "for the head"})
    text.add_argument("--exhaustive", action="store_true", help="score every image with the head (no shortlist)")
    image = sub.add_parser("image", help="top-k captions of a file for an image of the index")
    image.add_argument("--index", required=True)
    image.add_argument("--captions", required=True, help="one caption a line")
    add_schema_options(image, image, ("item",), required=("item",))
    export = sub.add_parser("export", help="write the encoded features (.npz)")
    export.add_argument("--index", required=True)
    export.add_argument("--captions", help="also encode these captions")
    export.add_argument("--out", required=True)
    for command in (text, image, export):
        command.add_argument("--checkpoint", default=None,
                             help="the index's checkpoint, if it has moved (its content must be the same)")
        command.add_argument("--shortlist", default=None, help="the index's --shortlist checkpoint, if it has moved")
    for command in (index, text, image, export):
        add_schema_options(command, command, ("top", "batch_size", "device"),
                           batch_size={"default": 128, "help": "items per encoder batch"})
    for command in (index, export):
        command.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if getattr(args, "regions", None) and getattr(args, "images", None):   # one collection per index
        raise ConfigError("--regions and --images cannot be given together: an index is of one collection (region "
                          "features for region models, image files for models on raw images)")
    if any(not query.strip() for query in getattr(args, "query", None) or []):
        raise ConfigError("--query must be a caption (got an empty one)")
    # torch, FAISS and the model code: only once the command line holds
    from checkpoints.hub import resolve as resolve_checkpoint
    from devices import resolve_device
    from retrieval import commands
    # a model folder, a file, or a hub name (ORG/NAME) resolved through the HuggingFace cache
    args.checkpoint = resolve_checkpoint(getattr(args, "checkpoint", None), "--checkpoint")
    args.shortlist = resolve_checkpoint(getattr(args, "shortlist", None), "--shortlist")
    setup_logging()
    device = resolve_device(args.device)
    run = {"index": commands.command_index, "text": commands.command_text, "image": commands.command_image,
           "export": commands.command_export}
    return run[args.command](args, device)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
