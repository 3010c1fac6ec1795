"""Experiment assignment: stable per user, proportional to the weights, reshuffled by the salt."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from app.domain.experiments import Experiment, ExperimentVariant, assign_variant, bucket

USERS = [uuid.UUID(int=n * 7919 + 1) for n in range(4000)]


def experiment(*weights: float, salt: str = "salt-1") -> Experiment:
    return Experiment(
        name="exp",
        kind="COMPREHENSION",
        salt=salt,
        variants=[ExperimentVariant(name=f"v{i}", scorer=f"s{i}", weight=w) for i, w in enumerate(weights)],
    )


def shares(exp: Experiment) -> dict[str, float]:
    counts: dict[str, int] = {}
    for user in USERS:
        name = assign_variant(exp, user).name
        counts[name] = counts.get(name, 0) + 1
    return {name: count / len(USERS) for name, count in counts.items()}


def test_bucket_is_in_unit_interval_and_stable() -> None:
    values = [bucket("s", u) for u in USERS]
    assert all(0.0 <= v < 1.0 for v in values)
    assert values == [bucket("s", u) for u in USERS]


def test_assignment_is_deterministic() -> None:
    exp = experiment(1, 1, 1)
    assert [assign_variant(exp, u) for u in USERS] == [assign_variant(exp, u) for u in USERS]


@pytest.mark.parametrize("weights", [(1, 1), (9, 1), (1, 2, 1)])
def test_shares_follow_the_weights(weights: tuple[float, ...]) -> None:
    observed = shares(experiment(*weights))
    total = sum(weights)
    for index, weight in enumerate(weights):
        # 4,000 users: a binomial share has sd <= 0.008, so 0.03 is about 4 sd
        assert observed.get(f"v{index}", 0.0) == pytest.approx(weight / total, abs=0.03)


def test_a_new_salt_reshuffles_users() -> None:
    a, b = experiment(1, 1, salt="one"), experiment(1, 1, salt="two")
    moved = sum(assign_variant(a, u).name != assign_variant(b, u).name for u in USERS)
    assert 0.4 < moved / len(USERS) < 0.6  # independent halves: about half move


def test_empty_salt_means_the_name() -> None:
    named = msgspec.structs.replace(experiment(1, 1), salt="")
    salted = msgspec.structs.replace(experiment(1, 1), salt="exp")
    assert [assign_variant(named, u) for u in USERS[:200]] == [assign_variant(salted, u) for u in USERS[:200]]


def test_a_single_variant_gets_everyone() -> None:
    assert set(shares(experiment(3))) == {"v0"}


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "x", "kind": "COMPREHENSION", "variants": []},
        {"name": "x", "kind": "NOPE", "variants": [{"name": "a", "scorer": "s"}]},
        {"name": "x", "kind": "CONSENT", "variants": [{"name": "a", "scorer": "s", "weight": 0}]},
        {"name": "Bad Name", "kind": "CONSENT", "variants": [{"name": "a", "scorer": "s"}]},
    ],
)
def test_invalid_experiments_are_refused(raw: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, Experiment)
