"""The typed schema of an option (type, default, range or choices, role) and the resolved Config.

Options are declared once: the core ones and the tools' in `config.options`, an encoder pair's and a
head's in `config.catalogue` (light, so that a command line is parsed before torch is imported; the
specs under `pairs/` and `modules/heads/` take them from there); `config.options.all_options`
gathers them. The parsers, the recipe files, resolution, `--help` and the resume and `--init_from`
checks all read these declarations. This module imports nothing of the project but the error
classes, so that any layer may declare options.
"""

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from errors import ConfigError

# What an option is for; this decides what a resumed or an --init_from run may change.
MODEL = "model"          # defines the network: fixed by a checkpoint (resume and --init_from)
TRAINING = "training"    # defines the optimisation or the data: fixed on resume, free with --init_from
LOCATION = "location"    # where data or a backbone lives: may change between runs (contents are checked)
RUNTIME = "runtime"      # how, where and how long it runs: free on resume
COMMAND = "command"      # what this invocation does (output folder, resume, overwrite, recipe)


@dataclass(frozen=True)
class Option:
    """One option. `low` / `high` bound a number (every number of a program has both, so that a
    mistyped value is one line rather than an overflow or thousands of processes), `closed` says which ends are included ("[]",
    "[)", "(]", "()"); `choices` lists the allowed values; a `default` of None means the recipe,
    the encoder pair or the head decides. `flag` False: set by recipes or derivation only."""

    name: str
    type: type
    default: Any
    help: str
    role: str = TRAINING
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    closed: str = "[]"
    flag: bool = True
    nargs: str | None = None   # "+": a list of values
    evaluation: bool = False   # test.py / testall.py may set it, overriding the checkpoint's value

    def check(self, value) -> None:
        """A wrong type or a value outside the range or choices is one line naming the option."""
        if value is None:
            return
        for item in (value if self.nargs else [value]):
            self._check_one(item)

    def _check_one(self, value) -> None:
        number = (int, float) if self.type is float else self.type
        if not isinstance(value, number) or (self.type is not bool and isinstance(value, bool)):
            raise ConfigError(f"--{self.name} must be {'a number' if self.type is float else self.type.__name__} "
                              f"(got {value!r})")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"--{self.name} must be one of {', '.join(map(str, self.choices))} (got {value!r})")
        if self.low is None and self.high is None:
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{self.name} must be a finite number (got {value})")
        above = self.low is None or (value >= self.low if self.closed[0] == "[" else value > self.low)
        below = self.high is None or (value <= self.high if self.closed[1] == "]" else value < self.high)
        if not above:           # the lower bound, which is what a small mistake misses
            bound = f"at least {self.low}" if self.closed[0] == "[" else f"greater than {self.low}"
            raise ConfigError(f"--{self.name} must be {bound} (got {value})")
        if not below:           # the whole range: the upper bound alone reads as arbitrary
            raise ConfigError(f"--{self.name} must be in {self.closed[0]}{self.low}, {self.high}{self.closed[1]} "
                              f"(got {value})")


class Config(SimpleNamespace):
    """A resolved configuration: one attribute per option of the schema, JSON round-trip."""

    def to_dict(self) -> dict:
        return dict(vars(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
