"""Write the demo datasets (real on-disk formats) and tiny backbones without training anything.

    python tools/make_demo_data.py demo_data            # regions + images + tiny BERT + tiny CLIP
    python train.py --data_path demo_data/regions --data_name f30k_precomp --img_dim 256 \\
        --bert_path demo_data/tiny_bert --embed_size 128 --batch_size 64 --workers 0 ...
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from config.parsers import Parser, add_schema_options  # noqa: E402
from demo.__main__ import check_output  # noqa: E402
from demo.data import write_image_dataset, write_region_dataset  # noqa: E402
from outputs.folders import FolderLock  # noqa: E402
from outputs.manifest import claim_contents, make_way  # noqa: E402

PARTS = ("regions", "images", "tiny_bert", "tiny_clip")


def main(argv=None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output")
    add_schema_options(parser, parser, ("train_images", "test_images", "region_dim", "seed"),
                       seed={"help": "everything generated is a function of it"})
    parser.add_argument("--overwrite", action="store_true", help="replace the data sets this tool (or the demo) "
                                                                 "wrote into OUTPUT before; nothing else is touched")
    args = parser.parse_args(argv)
    check_output(args)
    # one writer at a time: a second would replace the data the first is writing
    lock = FolderLock(args.output, "output").acquire()
    try:
        make_way(args.output, "tools/make_demo_data.py", PARTS, args.overwrite, "output")
        write_all(args)
        claim_contents(args.output, "tools/make_demo_data.py", PARTS)
    except BaseException:
        lock.release(undo=True)
        raise
    lock.release()
    print(f"wrote {args.output}/regions/f30k_precomp, {args.output}/images (Karpathy JSON + JPEGs), "
          f"{args.output}/tiny_bert, {args.output}/tiny_clip")


def write_all(args) -> None:
    """The four parts, each a function of --seed."""
    # torch and transformers (the tiny backbones): only once the command line holds
    from demo.tiny_models import write_tiny_bert, write_tiny_clip
    setup_logging()
    region_captions = write_region_dataset(
        os.path.join(args.output, "regions"),
        {"train": args.train_images, "dev": args.test_images, "test": args.test_images},
        dim=args.region_dim, seed=args.seed)
    image_captions = write_image_dataset(
        os.path.join(args.output, "images"),
        {"train": args.train_images, "val": args.test_images, "test": args.test_images}, seed=args.seed)
    write_tiny_bert(os.path.join(args.output, "tiny_bert"), region_captions, hidden=64, seed=args.seed)
    write_tiny_clip(os.path.join(args.output, "tiny_clip"), image_captions, image_size=64, projection_dim=64,
                    seed=args.seed)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
