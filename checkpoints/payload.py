"""What every checkpoint of ours holds, in a `.pth` file or a model folder: one class owns the schema,
its format and version, and the way to and from a file.

    format, version     "dimmatch", 2 (version 1, written before checkpoints carried their tokenizer, is
                        read as well: it has no tokenizer files)
    config              the typed config (as a dict) that rebuilds the model
    backbone_config     the backbone's architecture (built without initialising it)
    tokenizer           the tokenizer's files {kind, files}, so a checkpoint evaluates anywhere, offline
    model               the weights (a state dict)
    progress, metrics   what the run knew: counters and best validation, the metrics of this state
    data                identities of the training and validation data (a resume is checked against them)
    converted_from, source  a checkpoint converted from the authors' released file: which, and its system
    optimizer, scaler, rng, rng_ranks   checkpoint_last only: the training state an exact resume needs

Files are read by checkpoints.loading.read_payload, the one reader (evaluation, --init_from, resume);
model folders are written and read by checkpoints.hub through this class."""

import dataclasses
from dataclasses import dataclass, field

from errors import CheckpointError
from .atomic import atomic_torch_save


FORMAT = "dimmatch"
# 1: weights, config, backbone config; 2: also the tokenizer's files (evaluates anywhere, offline)
VERSION = 2
READABLE_VERSIONS = (1, 2)
TRAINING_STATE = ("optimizer", "scaler", "rng", "rng_ranks")
_RECORD = ("progress", "metrics", "data", "converted_from", "source")
_SCHEMA = ("config", "backbone_config", "tokenizer", "model") + _RECORD + TRAINING_STATE


@dataclass
class Payload:
    config: dict                        # Config.to_dict()
    backbone_config: dict
    model: dict                         # the state dict
    tokenizer: dict | None = None       # None in version 1 (and in files converted from it)
    progress: dict | None = None
    metrics: dict | None = None
    data: dict | None = None
    converted_from: str | None = None
    source: str | None = None
    optimizer: dict | None = None
    scaler: dict | None = None
    rng: object = None
    rng_ranks: list | None = None
    extra: dict = field(default_factory=dict)   # keys of a file this code does not know, kept as they are
    version: int = VERSION              # the version it was read with; a payload is always written as VERSION

    # ------------------------------------------------------------------ building
    @classmethod
    def of_model(cls, cfg, model, tokenizer: dict | None, progress: dict | None = None, metrics: dict | None = None,
                 data: dict | None = None, converted_from: str | None = None, source: str | None = None) -> "Payload":
        """The payload of a model: a training run's (progress, metrics, data identities) or a converted
        one's (`converted_from`, `source`). checkpoint_last adds the training state (with_training_state)."""
        return cls(config=cfg.to_dict(), backbone_config=model.backbone_config(), model=model.state_dict(),
                   tokenizer=tokenizer, progress=progress, metrics=metrics, data=data,
                   converted_from=converted_from, source=source)

    def with_training_state(self, optimizer: dict, scaler: dict, rng_ranks: list) -> "Payload":
        """Plus the optimiser, scaler and every rank's RNG states (dropout draws differ per rank, and each
        must go on with its own)."""
        return dataclasses.replace(self, optimizer=optimizer, scaler=scaler, rng=rng_ranks[0], rng_ranks=rng_ranks)

    def weights_only(self) -> "Payload":
        """The payload without its training state (what model_best and a conversion hold)."""
        return dataclasses.replace(self, **{name: None for name in TRAINING_STATE})

    @property
    def resumable(self) -> bool:
        """Whether it holds what an exact resume needs (checkpoint_last does; model_best and converted
        checkpoints hold weights only)."""
        return self.optimizer is not None and self.progress is not None and self.rng is not None

    def record(self) -> dict:
        """What is known of the model besides its weights (the run's record, or where it was converted from)."""
        return {name: getattr(self, name) for name in _RECORD if getattr(self, name) is not None}

    # ------------------------------------------------------------------ to and from a dict
    def to_dict(self, training_state: bool = True) -> dict:
        """The dict a `.pth` of ours holds (keys in the order they have always been written in)."""
        payload = {"format": FORMAT, "version": VERSION, "config": self.config,
                   "backbone_config": self.backbone_config, "tokenizer": self.tokenizer, "model": self.model,
                   "progress": self.progress, "metrics": self.metrics, "data": self.data}
        payload.update({name: getattr(self, name) for name in ("converted_from", "source")
                        if getattr(self, name) is not None})
        payload.update(self.extra)
        if training_state:
            payload.update({name: getattr(self, name) for name in TRAINING_STATE if getattr(self, name) is not None})
        return payload

    @staticmethod
    def is_ours(obj) -> bool:
        """Whether what a file holds is a payload of ours (any version), not an authors' released checkpoint."""
        return isinstance(obj, dict) and obj.get("format") == FORMAT

    @staticmethod
    def check_version(obj: dict, path: str) -> None:
        if obj.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}; this code reads "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}")

    @classmethod
    def from_dict(cls, obj, path: str) -> "Payload":
        """The payload a file of ours holds (versions 1 and 2), checked for its format and version."""
        if not cls.is_ours(obj):
            raise CheckpointError(f"checkpoint {path} is not a dimmatch checkpoint")
        cls.check_version(obj, path)
        lacking = [name for name in ("config", "backbone_config", "model") if not isinstance(obj.get(name), dict)]
        if lacking:
            raise CheckpointError(f"checkpoint {path} has no {lacking[0]}: it is damaged or was not written by this "
                                  "project")
        known = {name: obj[name] for name in _SCHEMA if name in obj}
        extra = {key: value for key, value in obj.items() if key not in _SCHEMA and key not in ("format", "version")}
        return cls(**known, extra=extra, version=obj["version"])

    # ------------------------------------------------------------------ to a file
    def save(self, path: str) -> None:
        """Write it as a `.pth` of ours, atomically: a reader sees the previous file or the complete new one."""
        try:
            atomic_torch_save(self.to_dict(), path)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {path} ({exc.strerror or exc}); "
                                  "the previous file, if any, is intact") from exc
