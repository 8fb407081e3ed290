"""``config["inference"]`` as a typed ``InferenceConfig``, the task constants and the config digest."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lever_lm.io_utils import json_sha256

TASKS = ("vqa", "caption")
DEFAULT_MAX_NEW_TOKENS = {"vqa": 5, "caption": 20}
METRIC_OF_TASK = {"vqa": "vqa_accuracy", "caption": "cider"}


@dataclass(frozen=True)
class InferenceConfig:
    """``config["inference"]``, typed. ``max_new_tokens`` is resolved for the task (null: 5 for vqa, 20 for caption).
    Defaults and bounds are the config schema's (``lever_lm/schemas/config.schema.yaml``)."""

    shots: tuple[int, ...]  # each >= 1: zero-shot is the ZeroShot baseline, never a shot number
    max_queries: int | None  # None: the full val split; N: a seeded subset of N questions
    query_seed: int
    num_beams: int
    max_new_tokens: int
    batch_size: int
    retriever_seed: int
    always_normalize: bool
    #: None: ``batch_size`` prompts per generation batch; N: batches planned by tokens (``plan_generation_batches``)
    token_budget: int | None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, task: str) -> InferenceConfig:
        """From ``config["inference"]`` (None: all defaults), validated against the config schema with its defaults
        filled (``lever_lm.config.validate_section``); errors name the key: ``config key inference.shots.0: ...``.
        ``baselines`` (which baseline jobs exist) is not part of the config of a job."""
        from lever_lm.config import validate_section

        if task not in TASKS:
            raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
        section = validate_section("inference", section)

        def integer(value: Any) -> Any:  # the schema's integers include 2.0
            return None if value is None else int(value)

        max_new = integer(section["max_new_tokens"])
        return cls(
            shots=tuple(int(s) for s in section["shots"]),
            max_queries=integer(section["max_queries"]),
            query_seed=int(section["query_seed"]),
            num_beams=int(section["num_beams"]),
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS[task] if max_new is None else max_new,
            batch_size=int(section["batch_size"]),
            retriever_seed=int(section["retriever_seed"]),
            always_normalize=section["always_normalize"],
            token_budget=integer(section.get("token_budget")),
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
