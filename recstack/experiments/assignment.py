"""Who sees what: users are assigned to arms by a salted hash of their id.

``bucket(salt, user_id)`` is the first 8 bytes of blake2b(salt, user_id) as a fraction of 2**64, so
an assignment is the same in every process, after restarts and for ids never seen before (no table
to keep). A user first falls in or out of the long-term holdout (global salt); outside it, each
layer hashes the user once with its own salt and the layer's experiments take consecutive ranges of
that bucket (``fraction`` each: mutually exclusive within a layer); inside an experiment a second
hash with the experiment's salt picks the arm by weight (independent of the layer's bucket, so an
experiment's split does not depend on where its range lies).

A ``Variant`` is what one user is served: the combination of their arms over all layers (or the
holdout, or nothing). Serving builds one pipeline per variant. A user in an interleaving experiment
has the arm ``interleaved`` there; ``sides`` names the two variants whose lists they are shown
interleaved.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from recstack.config import ArmDef, Design, ExperimentDef, ExperimentsConfig

HOLDOUT = "holdout"
INTERLEAVED = "interleaved"  # the arm of a user in an interleaving experiment: both


def bucket(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, user_id)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Variant:
    """One served configuration: ``arms`` maps experiment name to arm name (empty: the base
    config); ``holdout`` marks the long-term holdout."""

    arms: tuple[tuple[str, str], ...] = ()
    holdout: bool = False

    @property
    def label(self) -> str | None:
        """What the impression log's ``experiment_arm`` column holds: a JSON object of experiment to
        arm (``{"holdout": "holdout"}`` for the holdout), or None outside every experiment."""
        if self.holdout:
            return json.dumps({HOLDOUT: HOLDOUT})
        return json.dumps(dict(self.arms), sort_keys=True) if self.arms else None


class Assigner:
    """Assigns users to variants under an ``[experiments]`` config."""

    def __init__(self, config: ExperimentsConfig) -> None:
        self.config = config
        self.tests = {t.name: t for t in config.tests if t.enabled}
        self.layers: dict[str, list[ExperimentDef]] = {}
        for test in self.tests.values():
            self.layers.setdefault(test.layer, []).append(test)

    @property
    def active(self) -> bool:
        return bool(self.tests) or self.config.holdout > 0

    def assign(self, user_id: str) -> Variant:
        cfg = self.config
        if cfg.holdout > 0 and bucket(cfg.salt, user_id) < cfg.holdout:
            return Variant(holdout=True)
        arms: list[tuple[str, str]] = []
        for layer, tests in self.layers.items():
            point = bucket(f"{cfg.salt}:{layer}", user_id)
            start = 0.0
            for test in tests:
                if start <= point < start + test.fraction:
                    arm = INTERLEAVED if test.design is Design.interleave else self.arm_of(test, user_id).name
                    arms.append((test.name, arm))
                    break
                start += test.fraction
        return Variant(tuple(sorted(arms)))

    def arm_of(self, test: ExperimentDef, user_id: str) -> ArmDef:
        total = sum(a.weight for a in test.arms)
        point = bucket(test.salt or test.name, user_id) * total
        for arm in test.arms:
            point -= arm.weight
            if point < 0:
                return arm
        return test.arms[-1]

    def variants(self) -> list[Variant]:
        """Every variant a user can be assigned (the base config first)."""
        per_layer: list[list[tuple[str, str] | None]] = []
        for tests in self.layers.values():
            options: list[tuple[str, str] | None] = [(t.name, a.name) for t in tests for a in t.arms]
            if sum(t.fraction for t in tests) < 1:
                options.append(None)
            per_layer.append(options)
        out = [Variant()]
        for combo in itertools.product(*per_layer):
            variant = Variant(tuple(sorted(c for c in combo if c is not None)))
            if variant not in out:
                out.append(variant)
        if self.config.holdout > 0:
            out.append(Variant(holdout=True))
        return out

    def sides(self, variant: Variant) -> tuple[str, Variant, Variant] | None:
        """For a variant in an interleaving experiment: (its name, the variant with its first arm,
        with its second arm), the two lists the user's list interleaves; else None."""
        for name, arm in variant.arms:
            if arm == INTERLEAVED:
                first, second = (a.name for a in self.tests[name].arms)
                rest = tuple(p for p in variant.arms if p[0] != name)
                return (
                    name,
                    Variant(tuple(sorted((*rest, (name, first))))),
                    Variant(tuple(sorted((*rest, (name, second))))),
                )
        return None

    def overrides(self, variant: Variant) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        """(model, serving overrides, retrieval overrides) of a variant."""
        if variant.holdout:
            return self.config.holdout_model, dict(self.config.holdout_serving), {}
        model: str | None = None
        serving: dict[str, Any] = {}
        retrieval: dict[str, Any] = {}
        for name, arm_name in variant.arms:
            arm = next(a for a in self.tests[name].arms if a.name == arm_name)
            model = arm.model if arm.model is not None else model
            serving |= arm.serving
            retrieval |= arm.retrieval
        return model, serving, retrieval


def parse_label(label: str | None) -> dict[str, str]:
    """The ``experiment_arm`` column's JSON object back as a dict ({} for None or junk)."""
    if not label:
        return {}
    try:
        value = json.loads(label)
    except json.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
