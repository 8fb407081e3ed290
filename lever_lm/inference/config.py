"""``config["inference"]`` as a typed ``InferenceConfig``, the task constants and the config digest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from lever_lm.io_utils import json_sha256

TASKS = ("vqa", "caption")
DEFAULT_MAX_NEW_TOKENS = {"vqa": 5, "caption": 20}
METRIC_OF_TASK = {"vqa": "vqa_accuracy", "caption": "cider"}


def _int_field(section: Mapping[str, Any], name: str, default: Any, low: int, allow_none: bool = False) -> Any:
    value = section.get(name, default)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        kind = "an integer or null" if allow_none else "an integer"
        raise ValueError(f"inference.{name}: expected {kind} >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InferenceConfig:
    """``config["inference"]``, typed. ``max_new_tokens`` is resolved for the task (null: 5 for vqa, 20 for caption)."""

    shots: tuple[int, ...] = (1, 2, 3, 4)
    max_queries: int | None = None  # None: the full val split; N: a seeded subset of N questions
    query_seed: int = 0
    num_beams: int = 3
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS["vqa"]
    batch_size: int = 16
    retriever_seed: int = 0
    always_normalize: bool = False
    #: None: ``batch_size`` prompts per generation batch; N: batches planned by tokens (``plan_generation_batches``)
    token_budget: int | None = None

    KNOWN_KEYS = ("shots", "max_queries", "query_seed", "num_beams", "max_new_tokens", "batch_size", "retriever_seed",
                  "always_normalize", "token_budget", "baselines")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, task: str) -> "InferenceConfig":
        """Errors name the key: ``inference.shots: ...``. ``baselines`` (which baseline jobs exist) is accepted and
        not part of the config of a job."""
        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        if section is not None and not isinstance(section, Mapping):
            raise ValueError(f"inference: expected a mapping, got {type(section).__name__}")
        section = dict(section or {})
        unknown = sorted(set(section) - set(cls.KNOWN_KEYS))
        if unknown:
            raise ValueError(f"inference: unknown key(s) {', '.join(unknown)} (known: {', '.join(cls.KNOWN_KEYS)})")
        shots = section.get("shots", list(cls.shots))
        if isinstance(shots, (str, bytes)) or not isinstance(shots, Sequence) or not shots:
            raise ValueError(f"inference.shots: expected a non-empty list of shot numbers, got {shots!r}")
        for shot in shots:
            if isinstance(shot, bool) or not isinstance(shot, (int, np.integer)) or shot < 0:
                raise ValueError(f"inference.shots: shot {shot!r} is not an integer >= 0")
        if len(set(shots)) != len(shots):
            raise ValueError(f"inference.shots: repeated shot numbers in {list(shots)}")
        always = section.get("always_normalize", False)
        if not isinstance(always, bool):
            raise ValueError(f"inference.always_normalize: expected true or false, got {always!r}")
        max_new = _int_field(section, "max_new_tokens", None, 1, allow_none=True)
        return cls(
            shots=tuple(int(s) for s in shots),
            max_queries=_int_field(section, "max_queries", None, 1, allow_none=True),
            query_seed=_int_field(section, "query_seed", 0, 0),
            num_beams=_int_field(section, "num_beams", 3, 1),
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS[task] if max_new is None else max_new,
            batch_size=_int_field(section, "batch_size", 16, 1),
            retriever_seed=_int_field(section, "retriever_seed", 0, 0),
            always_normalize=always,
            token_budget=_int_field(section, "token_budget", None, 1, allow_none=True),
        )

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records and the digests hash. ``token_budget`` only when set, so a job without one keeps
        the metrics, config digest and resume fingerprint it had before the key existed."""
        out = dataclasses.asdict(self)
        out["shots"] = list(self.shots)
        if self.token_budget is None:
            del out["token_budget"]
        return out


def config_digest(**parts: Any) -> str:
    """sha256 of the canonical json of what decides a job's results (config, identity, model entry)."""
    return json_sha256(parts)
