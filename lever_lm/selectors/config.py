"""Selector configuration (config.yaml's ``selector`` section) and the identity/paths of one training job.

Plain dataclasses, no torch: rules/common.smk and the config checks import this at plan time.
Every error is a ValueError that starts with the dotted key, e.g. ``selector.pointer.temperature: must be > 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from lever_lm.paths import VERSIONS

#: longest sequence ``select`` decodes (v0 sizes its position table for it; k may exceed the trained shots)
MAX_K = 8


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"must be an integer, got {value!r}")
    if value < minimum:
        _fail(key, f"must be >= {minimum}, got {value}")


def _check_number(key: str, value: Any, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, f"must be a number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        _fail(key, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        _fail(key, f"must be {'<' if high_open else '<='} {high}, got {value}")


def _build(cls: type, section: Any, key: str) -> Any:
    """A (sub)section dataclass from a mapping; unknown fields name ``key.<field>``."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        _fail(key, f"must be a mapping, got {type(section).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        _fail(f"{key}.{unknown[0]}", f"unknown field (known: {sorted(known)})")
    return cls(**dict(section))


@dataclass(frozen=True)
class GPTConfig:
    """v0: the GPT-2 body."""

    n_layer: int = 2
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1

    def check(self, key: str) -> None:
        for name in ("n_layer", "n_head", "n_embd"):
            _check_int(f"{key}.{name}", getattr(self, name), 1)
        if self.n_embd % self.n_head:
            _fail(f"{key}.n_embd", f"must be divisible by n_head={self.n_head}, got {self.n_embd}")
        _check_number(f"{key}.dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class PointerConfig:
    """v1-v4: the pointer network (encoders' width, logit temperature τ)."""

    hidden_dim: int = 256
    temperature: float = 0.1
    dropout: float = 0.1

    def check(self, key: str) -> None:
        _check_int(f"{key}.hidden_dim", self.hidden_dim, 1)
        _check_number(f"{key}.temperature", self.temperature, 0.0, low_open=True)
        _check_number(f"{key}.dropout", self.dropout, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class CrossAttentionConfig:
    """v2 (and v3/v4 on a v2 base): the query-to-pool attention layer."""

    heads: int = 4

    def check(self, key: str) -> None:
        _check_int(f"{key}.heads", self.heads, 1)


@dataclass(frozen=True)
class RankingConfig:
    """v3: CE + weight * ranking loss over an anchor's beams."""

    base: str = "v2"
    loss: str = "listwise"
    weight: float = 1.0
    temperature: float = 0.1
    margin: float = 0.1

    def check(self, key: str) -> None:
        if self.base not in ("v1", "v2"):
            _fail(f"{key}.base", f"must be v1 or v2, got {self.base!r}")
        if self.loss not in ("listwise", "pairwise"):
            _fail(f"{key}.loss", f"must be listwise or pairwise, got {self.loss!r}")
        _check_number(f"{key}.weight", self.weight, 0.0)
        _check_number(f"{key}.temperature", self.temperature, 0.0, low_open=True)
        _check_number(f"{key}.margin", self.margin, 0.0)


@dataclass(frozen=True)
class RLConfig:
    """v4: RCE warm-up epochs, then GRPO epochs, each with its own learning rate, from the v3 checkpoint."""

    rce_epochs: int = 5
    rce_lr: float = 1e-4
    rce_temperature: float = 0.1
    grpo_epochs: int = 5
    grpo_lr: float = 1e-5
    clip_eps: float = 0.2
    kl_beta: float = 0.1

    def check(self, key: str) -> None:
        _check_int(f"{key}.rce_epochs", self.rce_epochs, 0)
        _check_int(f"{key}.grpo_epochs", self.grpo_epochs, 0)
        if self.rce_epochs + self.grpo_epochs < 1:
            _fail(f"{key}.grpo_epochs", "rce_epochs + grpo_epochs must be >= 1")
        _check_number(f"{key}.rce_temperature", self.rce_temperature, 0.0, low_open=True)
        _check_number(f"{key}.rce_lr", self.rce_lr, 0.0, low_open=True)
        _check_number(f"{key}.grpo_lr", self.grpo_lr, 0.0, low_open=True)
        _check_number(f"{key}.clip_eps", self.clip_eps, 0.0, low_open=True)
        _check_number(f"{key}.kl_beta", self.kl_beta, 0.0)


@dataclass(frozen=True)
class SimilarityPriorConfig:
    """All versions: start from query-ICD similarity and learn a gated correction (selectors/similarity.py)."""

    enabled: bool = False
    image_weight: float = 10.0
    text_weight: float = 0.0
    lr: float | None = None  # None: the network's rate

    def check(self, key: str) -> None:
        if not isinstance(self.enabled, bool):
            _fail(f"{key}.enabled", f"must be true or false, got {self.enabled!r}")
        _check_number(f"{key}.image_weight", self.image_weight, 0.0)
        _check_number(f"{key}.text_weight", self.text_weight, 0.0)
        if self.lr is not None:
            _check_number(f"{key}.lr", self.lr, 0.0, low_open=True)
        if self.enabled and self.image_weight == 0 and self.text_weight == 0:
            _fail(f"{key}.image_weight", "image_weight and text_weight are both 0: the prior would rank nothing")


_SECTIONS = {"v0": GPTConfig, "pointer": PointerConfig, "cross_attention": CrossAttentionConfig,
             "ranking": RankingConfig, "rl": RLConfig, "similarity_prior": SimilarityPriorConfig}


@dataclass(frozen=True)
class SelectorConfig:
    """config.yaml ``selector``: the common training fields plus one nested section per model part.

    ``top_k`` is the k of the Top-k validation metric. v4 trains ``rl.rce_epochs + rl.grpo_epochs`` epochs at
    ``rl.rce_lr`` then ``rl.grpo_lr`` (``epochs`` and ``lr`` are for v0-v3).
    """

    seed: int = 0
    val_ratio: float = 0.1
    drop_negative_beams: bool = False
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_ratio: float = 0.05
    label_smoothing: float = 0.0
    top_k: int = 5
    v0: GPTConfig = field(default_factory=GPTConfig)
    pointer: PointerConfig = field(default_factory=PointerConfig)
    cross_attention: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    similarity_prior: SimilarityPriorConfig = field(default_factory=SimilarityPriorConfig)

    def __post_init__(self) -> None:
        key = "selector"
        _check_int(f"{key}.seed", self.seed, 0)
        _check_number(f"{key}.val_ratio", self.val_ratio, 0.0, 1.0, high_open=True)
        if not isinstance(self.drop_negative_beams, bool):
            _fail(f"{key}.drop_negative_beams", f"must be true or false, got {self.drop_negative_beams!r}")
        _check_int(f"{key}.epochs", self.epochs, 1)
        _check_int(f"{key}.batch_size", self.batch_size, 1)
        _check_int(f"{key}.top_k", self.top_k, 1)
        if self.lr is not None:
            _check_number(f"{key}.lr", self.lr, 0.0, low_open=True)
        _check_number(f"{key}.weight_decay", self.weight_decay, 0.0)
        _check_number(f"{key}.warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        _check_number(f"{key}.label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                _fail(f"{key}.{name}", f"must be a {cls.__name__}, got {type(value).__name__}")
            value.check(f"{key}.{name}")
        if self.pointer.hidden_dim % self.cross_attention.heads:
            _fail(f"{key}.cross_attention.heads",
                  f"must divide pointer.hidden_dim={self.pointer.hidden_dim}, got {self.cross_attention.heads}")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "SelectorConfig":
        """From config.yaml's ``selector`` mapping (missing fields take the defaults)."""
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            _fail("selector", f"must be a mapping, got {type(section).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            _fail(f"selector.{unknown[0]}", f"unknown field (known: {sorted(known)})")
        values = dict(section)
        for name, sub in _SECTIONS.items():
            if name in values:
                values[name] = _build(sub, values[name], f"selector.{name}")
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
