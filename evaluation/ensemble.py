"""Ensembles: the weighted mean of several models' score matrices, as the papers' best rows.

Members are scored one after another, so only one model is in memory at a time, and the mean
is accumulated in place in one float32 matrix (COCO 5K x 25K: 0.5 GB)."""

import re

import numpy as np

from errors import ConfigError, UserError


def ensemble_weights(weights: list[float] | None, members: int, what: tuple = ("checkpoints", "checkpoint")) \
        -> list[float]:
    """Per-member weights normalised to sum 1; equal weights by default (each weight is in the
    schema's range, positive and bounded, so that the sum neither vanishes nor overflows)."""
    if weights is None:
        return [1.0 / members] * members
    if len(weights) != members:
        raise ConfigError(f"--weights has {len(weights)} values for {members} {what[0]}; give one per {what[1]}")
    if members == 1:
        raise ConfigError(f"--weights weighs the members of an ensemble; give two {what[0]} or more, or no --weights")
    total = sum(weights)
    return [weight / total for weight in weights]


class RunningMean:
    """sum_i w_i S_i, added member by member into one matrix. A member's matrix is scaled in
    place (it is not used afterwards), so no temporary of the matrix's size is made."""

    def __init__(self):
        self.total = None
        self.first = None

    def check(self, sims: np.ndarray, name: str) -> None:
        """The first member sets the shape; every other must have it."""
        if self.first is None:
            self.first = (name, sims.shape)
        elif sims.shape != self.first[1]:
            raise UserError(f"{name} has a {sims.shape[0]} x {sims.shape[1]} score matrix but {self.first[0]} has "
                            f"{self.first[1][0]} x {self.first[1][1]}: ensemble members must score the same items")

    def add(self, sims: np.ndarray, weight: float, name: str) -> None:
        self.check(sims, name)
        sims = np.asarray(sims, dtype=np.float32)
        if self.total is None:
            self.total = np.multiply(sims, np.float32(weight), out=sims)
        else:
            self.total += np.multiply(sims, np.float32(weight), out=sims)


def _comparable(caption: str) -> str:
    # precomputed caption files and Karpathy JSON differ in case, punctuation and spacing only
    return re.sub(r"[^a-z0-9]", "", caption.lower())


def check_same_captions(reference: tuple[str, list[str]], member: tuple[str, list[str]]) -> None:
    """Members evaluated on different data files (regions and raw images) must list the same
    captions in the same order, or their scores would be averaged across different pairs."""
    (first_name, first), (name, captions) = reference, member
    if len(first) != len(captions):
        raise UserError(f"{name} is evaluated on {len(captions)} captions, {first_name} on {len(first)}")
    for index, (a, b) in enumerate(zip(first, captions)):
        if _comparable(a) != _comparable(b):
            raise UserError(f"caption {index} of {name} ({b[:40]!r}) is not caption {index} of {first_name} "
                            f"({a[:40]!r}): they are not evaluated on the same items in the same order")
