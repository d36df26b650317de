"""The model card (README.md) of a model folder, filled from what the checkpoint knows: the
system, its paper, the recipe, the training data, the validation metrics, the command that
evaluates it and the folder's content hash (filled in by checkpoints.hub when it is known)."""

PAPERS = {
    "esl": ("Enhanced Semantic Similarity Learning Framework for Image-Text Matching",
            "Kun Zhang, Bo Hu, Huatian Zhang, Zhe Li, Zhendong Mao", "IEEE Transactions on Circuits and Systems for "
            "Video Technology", 2023, "zhang2023esl", "kkzhang95/ESL (ESL-CLIP), CrossmodalGroup/ESL (ESL-region)"),
    "xdim": ("Unlocking the Power of Cross-Dimensional Semantic Dependency for Image-Text Matching",
             "Kun Zhang, Lei Zhang, Bo Hu, Mengxiao Zhu, Zhendong Mao", "Proceedings of the 31st ACM International "
             "Conference on Multimedia", 2023, "zhang2023xdim", "CrossmodalGroup/X-Dim"),
}
from evaluation.metrics import RECALL_AT, RECALL_KEYS
from pairs import layout_of

DATA_NAMES = {"f30k_precomp": "Flickr30K (BUTD regions)", "coco_precomp": "MS-COCO (BUTD regions)",
              "f30k": "Flickr30K (images, Karpathy splits)", "coco": "MS-COCO (images, Karpathy splits)"}


# the published systems, by (encoder pair, head); any other combination is named by its parts
SYSTEMS = {("clip", "esl_h"): ("ESL-CLIP H", "esl"), ("clip", "esl_a"): ("ESL-CLIP A", "esl"),
           ("region_bert", "esl_h"): ("ESL-region H", "esl"), ("region_bert", "esl_a"): ("ESL-region A", "esl"),
           ("region_bert", "xdim"): ("X-Dim", "xdim")}


def system_of(cfg) -> tuple[str, str | None]:
    """(system name, paper key) of a config."""
    return SYSTEMS.get((cfg.encoders, cfg.sim_head), (f"{cfg.encoders} encoders + {cfg.sim_head} head", None))


def _dataset(cfg) -> str | None:
    names = [getattr(cfg, option, None) for option in layout_of(cfg).option_names]
    return next((name for name in names if name in DATA_NAMES), None)


def _metrics_table(metrics: dict) -> list[str]:
    lines = ["| direction | " + " | ".join(f"R@{k}" for k in RECALL_AT) + " |", "|---" * (1 + len(RECALL_AT)) + "|"]
    for direction, label in (("i2t", "image to text"), ("t2i", "text to image")):
        values = metrics.get(direction) or {}
        lines.append(f"| {label} | " + " | ".join(f"{values.get(k, float('nan')):.1f}" for k in RECALL_KEYS)
                     + " |")
    return lines + ["", f"rSum {metrics['rsum']:.1f}"]


def evaluate_command(cfg, name: str) -> str:
    """test.py (testall.py for MS-COCO) with the pair's data options: names kept, folders to be given."""
    layout = layout_of(cfg)
    program = "testall.py" if layout.coco(cfg) else "test.py"
    options = [option.name for option in layout.options if option.name in layout.required
               or getattr(cfg, option.name, None) in DATA_NAMES]
    data = " ".join(f"--{option} {value if value in DATA_NAMES else option.upper()}"
                    for option in options for value in [getattr(cfg, option, None)])
    return f"python {program} --checkpoint {name} {data}"


def model_card(payload, cfg, name: str = "FOLDER") -> str:
    """README.md of a model folder; `{content_sha256}` is left for the writer to fill."""
    system, paper = system_of(cfg)
    dataset = _dataset(cfg)
    front = ["---", "library_name: dimmatch", "pipeline_tag: feature-extraction", "tags:", "- image-text-matching",
             "- image-text-retrieval",
             f"- {cfg.sim_head}", f"- {cfg.encoders}", "---", ""]
    lines = [f"# {system} ({cfg.encoders} encoders, {cfg.sim_head} head)", ""]
    converted = payload.converted_from
    if converted:
        source = payload.source if payload.source is not None else ""
        lines += [f"Converted from the authors' released checkpoint `{converted}` ({source}).", ""]
    lines += ["## System", "", f"* encoders: `{cfg.encoders}`; similarity head: `{cfg.sim_head}`; joint embedding "
              f"size {cfg.embed_size}", ""]
    if paper:
        title, authors, venue, year, key, code = PAPERS[paper]
        lines += ["## Paper and citation", "", f"{authors}. *{title}*. {venue}, {year}. Released code: {code}.", "",
                  "```bibtex", f"@article{{{key},", f"  title = {{{title}}},", f"  author = {{{authors}}},",
                  f"  journal = {{{venue}}},", f"  year = {{{year}}}", "}", "```", ""]
    recipe = getattr(cfg, "recipe", None)
    lines += ["## Recipe", "", f"* recipe: `{recipe or 'the encoder pair default'}`"]
    for option in ("num_epochs", "batch_size", "learning_rate", "optimizer", "loss", "seed", "amp"):
        if getattr(cfg, option, None) is not None:
            lines.append(f"* {option}: `{getattr(cfg, option)}`")
    lines += ["", "## Training data", "", f"* {DATA_NAMES.get(dataset, dataset or 'not recorded')}"]
    data = payload.data or {}
    for split, identity in sorted(data.items()) if isinstance(data, dict) else ():
        if isinstance(identity, dict) and "captions" in identity:
            lines.append(f"* {split}: {identity.get('images')} images, {identity.get('captions')} captions "
                         f"(captions sha256 {str(identity.get('captions_sha256'))[:12]})")
    lines += [""]
    metrics = payload.metrics
    progress = payload.progress
    lines += ["## Validation metrics", ""]
    if metrics:
        where = f"split `{getattr(cfg, 'val_split', None)}`"
        if progress:
            where += f", epoch {progress['epoch']}, global step {progress['global_step']}"
        lines += [f"Selected by rSum on {where}:", ""] + _metrics_table(metrics)
    else:
        lines.append("None recorded (converted checkpoint: see the published numbers of the paper).")
    lines += ["", "## Evaluate", "", "```sh", evaluate_command(cfg, name), "```", "",
              "## Files", "", "* `config.json`: the typed config that rebuilds the model, the backbone architecture, "
              "progress, metrics and the SHA-256 of every other file", "* `model.safetensors`: the weights (no pickle)",
              "* the tokenizer's files", "", "Content hash (config and weights): `{content_sha256}`", ""]
    return "\n".join(front + lines)
