"""Scorer experiments: deterministic, weighted assignment of a user to a variant. Pure.

A user's variant depends only on the experiment's salt and their id, so it is stable across requests,
instances and restarts, and changing the salt reshuffles everyone (start a fresh experiment).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = ["Experiment", "ExperimentVariant", "assign_variant", "bucket"]

Slug = Annotated[str, Meta(min_length=1, max_length=60, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class ExperimentVariant(Struct, frozen=True, forbid_unknown_fields=True):
    """One arm: the scorer it uses and its share of users (weights are relative, need not sum to 1)."""

    name: Slug
    scorer: str
    weight: Annotated[float, Meta(gt=0)] = 1.0


class Experiment(Struct, frozen=True, forbid_unknown_fields=True):
    """An A/B test over the scorer used for one question kind (``[[scoring.experiments]]``)."""

    name: Slug
    kind: Literal["COMPREHENSION", "CONSENT", "FREE_RESPONSE"]
    variants: Annotated[list[ExperimentVariant], Meta(min_length=1, max_length=10)]
    salt: str = ""
    """Mixed into the hash; empty means the experiment's name."""
    enabled: bool = True


_SCALE = float(1 << 64)


def bucket(salt: str, user_id: uuid.UUID) -> float:
    """A uniform number in [0, 1) fixed by ``salt`` and ``user_id`` (first 64 bits of SHA-256)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_variant(experiment: Experiment, user_id: uuid.UUID) -> ExperimentVariant:
    """The variant ``user_id`` belongs to: the bucket falls into the variants' cumulative weights, in
    the order the variants are listed."""
    point = bucket(experiment.salt or experiment.name, user_id) * sum(v.weight for v in experiment.variants)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.weight
        if point < edge:
            return variant
    return experiment.variants[-1]  # float rounding at the very top edge
