"""Selector configuration (config.yaml's ``selector`` section) and the identity/paths of one training job.

Plain dataclasses, no torch: rules/common.smk and the config checks import this at plan time.
Every error is a ValueError that starts with the dotted key, e.g. ``selector.pointer.temperature: must be > 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from lever_lm.paths import VERSIONS

#: longest sequence ``select`` decodes (v0 sizes its position table for it; k may exceed the trained shots)
MAX_K = 8


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


def _typed(cls: type, section: Mapping[str, Any], skip: Any = ()) -> dict[str, Any]:
    """The fields of ``cls`` (but ``skip``) from a schema-validated section: integers as int (the schema's integers
    include 2.0), other values as they are (a number keeps its YAML form, as the checkpoints record it)."""
    return {
        f.name: int(section[f.name]) if f.type == "int" else section[f.name] for f in fields(cls) if f.name not in skip
    }


# Types, bounds, enums, unknown keys and defaults are the config schema's (lever_lm/schemas/config.schema.yaml,
# ``selector``); the dataclasses check only what the schema cannot express (relations between fields).


@dataclass(frozen=True)
class GPTConfig:
    """v0: the GPT-2 body."""

    n_layer: int
    n_head: int
    n_embd: int
    dropout: float

    def check(self, key: str) -> None:
        if self.n_embd % self.n_head:
            _fail(f"{key}.n_embd", f"must be divisible by n_head={self.n_head}, got {self.n_embd}")


@dataclass(frozen=True)
class PointerConfig:
    """v1-v4: the pointer network (encoders' width, logit temperature τ)."""

    hidden_dim: int
    temperature: float
    dropout: float

    def check(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class CrossAttentionConfig:
    """v2 (and v3/v4 on a v2 base): the query-to-pool attention layer."""

    heads: int

    def check(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class RankingConfig:
    """v3: CE + weight * ranking loss over an anchor's beams."""

    base: str
    loss: str
    weight: float
    temperature: float
    margin: float

    def check(self, key: str) -> None:
        pass


@dataclass(frozen=True)
class RLConfig:
    """v4: RCE warm-up epochs, then GRPO epochs, each with its own learning rate, from the v3 checkpoint."""

    rce_epochs: int
    rce_lr: float
    rce_temperature: float
    grpo_epochs: int
    grpo_lr: float
    clip_eps: float
    kl_beta: float

    def check(self, key: str) -> None:
        if self.rce_epochs + self.grpo_epochs < 1:
            _fail(f"{key}.grpo_epochs", "rce_epochs + grpo_epochs must be >= 1")


@dataclass(frozen=True)
class SimilarityPriorConfig:
    """All versions: start from query-ICD similarity and learn a gated correction (selectors/similarity.py)."""

    enabled: bool
    image_weight: float
    text_weight: float
    lr: float | None  # None: the network's rate

    def check(self, key: str) -> None:
        if self.enabled and self.image_weight == 0 and self.text_weight == 0:
            _fail(f"{key}.image_weight", "image_weight and text_weight are both 0: the prior would rank nothing")


_SECTIONS = {
    "v0": GPTConfig,
    "pointer": PointerConfig,
    "cross_attention": CrossAttentionConfig,
    "ranking": RankingConfig,
    "rl": RLConfig,
    "similarity_prior": SimilarityPriorConfig,
}


@dataclass(frozen=True)
class SelectorConfig:
    """config.yaml ``selector``: the common training fields plus one nested section per model part.

    ``top_k`` is the k of the Top-k validation metric. v4 trains ``rl.rce_epochs + rl.grpo_epochs`` epochs at
    ``rl.rce_lr`` then ``rl.grpo_lr`` (``epochs`` and ``lr`` are for v0-v3). Build it with ``from_config``.
    """

    seed: int
    val_ratio: float
    drop_negative_beams: bool
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    label_smoothing: float
    top_k: int
    v0: GPTConfig
    pointer: PointerConfig
    cross_attention: CrossAttentionConfig
    ranking: RankingConfig
    rl: RLConfig
    similarity_prior: SimilarityPriorConfig

    def __post_init__(self) -> None:
        key = "selector"
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                _fail(f"{key}.{name}", f"must be a {cls.__name__}, got {type(value).__name__}")
            value.check(f"{key}.{name}")
        if self.pointer.hidden_dim % self.cross_attention.heads:
            _fail(
                f"{key}.cross_attention.heads",
                f"must divide pointer.hidden_dim={self.pointer.hidden_dim}, got {self.cross_attention.heads}",
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> SelectorConfig:
        """From config.yaml's ``selector`` mapping (None: all defaults), validated against the config schema with
        its defaults filled (``lever_lm.config.validate_section``); errors name the key:
        ``config key selector.pointer.temperature: ...``."""
        from lever_lm.config import validate_section

        section = validate_section("selector", section)
        values = _typed(cls, section, skip=_SECTIONS)
        for name, sub in _SECTIONS.items():
            values[name] = sub(**_typed(sub, section[name]))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def total_epochs(self, version: str) -> int:
        return self.rl.rce_epochs + self.rl.grpo_epochs if version == "v4" else self.epochs

    def model_params(self, version: str) -> dict[str, Any]:
        """The hyper-parameters that define the network of ``version`` (recorded in its checkpoint)."""
        # recorded only when on, so checkpoints of the spec's networks keep their exact params
        prior = {"similarity_prior": asdict(self.similarity_prior)} if self.similarity_prior.enabled else {}
        if version == "v0":
            return {"kind": "gpt", **asdict(self.v0), **prior}
        base = self.ranking.base if version in ("v3", "v4") else version
        params: dict[str, Any] = {"kind": "pointer", **asdict(self.pointer), "cross_attention": base == "v2"}
        if base == "v2":
            params["heads"] = self.cross_attention.heads
        return {**params, **prior}


@dataclass(frozen=True)
class TrainIdentity:
    """Which selector a training job makes: the wildcards of its output directory."""

    dataset: str
    beam_model: str
    sampler: str
    ex_name: str
    version: str
    lever_lm: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TrainIdentity.{f.name}: must be a non-empty string, got {value!r}")
        if self.version not in VERSIONS:
            raise ValueError(f"version: unknown selector version {self.version!r} (known: {list(VERSIONS)})")
        from lever_lm.selectors.features import parse_feature_choice

        parse_feature_choice(self.lever_lm)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TrainPaths:
    """Inputs and output directory of one training job (``init_checkpoint``: v4's v3 best.ckpt)."""

    beams: str
    candidates: str
    train_embeddings_image: str
    train_embeddings_text: str
    train_embeddings_meta: str
    out_dir: str
    init_checkpoint: str | None = None
