"""Build an LVLM adapter (or materialise a tiny model) from a ``beam_models.<name>`` config entry.

A ``variant: tiny`` entry may carry two fields the adapters do not know: ``tiny`` (the model's sizes,
``lever_lm.lvlm.tiny.QwenTinyDims`` / ``FlamingoTinyDims``) and ``pretrain`` (``lever_lm.lvlm.tiny.PretrainConfig``;
absent or null: the tiny model stays randomly initialised). This module strips them before the family's own
config parser sees the entry, and checks them here, so a bad field fails at planning time. Pretraining itself is the
toy world's: rule ``tiny_lvlm``'s script runs it with what ``tiny_spec`` returns.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from lever_lm.lvlm.base import LVLMAdapter

# family -> (module, loader, config field that points a tiny variant at its materialised dir)
_FAMILIES = {
    "flamingo": ("lever_lm.lvlm.flamingo", "load_flamingo_adapter", "model_dir"),
    "qwen2_5_vl": ("lever_lm.lvlm.qwen", "load_qwen_adapter", "model_path"),
}
TINY_ONLY_FIELDS = ("tiny", "pretrain")


def _family(name: str, entry: dict) -> tuple[Any, str, str]:
    family = entry.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"beam_models.{name}.family: {family!r} is not one of {sorted(_FAMILIES)}")
    module_name, loader, dir_field = _FAMILIES[family]
    return importlib.import_module(module_name), loader, dir_field


def _adapter_entry(name: str, entry: dict) -> dict:
    """The entry without the tiny-only fields (which only a tiny variant may have)."""
    present = [f for f in TINY_ONLY_FIELDS if f in entry]
    if present and entry.get("variant") != "tiny":
        raise ValueError(f"beam_models.{name}.{present[0]}: only a variant 'tiny' entry has it")
    return {k: v for k, v in entry.items() if k not in TINY_ONLY_FIELDS}


def load_adapter(name: str, entry: dict, tiny_model_dir: str | None = None) -> LVLMAdapter:
    """The adapter for ``beam_models.<name>``; a tiny variant loads from ``tiny_model_dir`` like a real model."""
    module, loader, dir_field = _family(name, entry)
    entry = _adapter_entry(name, entry)
    if entry.get("variant") == "tiny":
        if tiny_model_dir is None:
            raise ValueError(f"beam_models.{name}: a tiny variant needs its model dir (rule tiny_lvlm)")
        entry[dir_field] = str(tiny_model_dir)
    return getattr(module, loader)(module.config_from_dict(name, entry))


def parse_config(name: str, entry: dict) -> Any:
    """The family's typed config for ``beam_models.<name>``; unknown or bad fields raise ValueError naming them.

    A tiny variant's ``tiny`` and ``pretrain`` sections are checked too (see ``tiny_spec``)."""
    module, _, _ = _family(name, entry)
    config = module.config_from_dict(name, _adapter_entry(name, entry))
    if entry.get("variant") == "tiny":
        tiny_spec(name, entry)
    return config


def tiny_spec(name: str, entry: dict):
    """(family, sizes, pretraining config or None, seed) of a tiny ``beam_models.<name>`` entry."""
    from lever_lm.lvlm.tiny import PretrainConfig, tiny_dims

    _family(name, entry)
    if entry.get("variant") != "tiny":
        raise ValueError(f"beam_models.{name}.variant: expected 'tiny', got {entry.get('variant')!r}")
    dims = tiny_dims(name, entry["family"], entry.get("tiny"))
    section = entry.get("pretrain")
    pretrain = None if section is None else PretrainConfig.from_config(section, f"beam_models.{name}.pretrain")
    if pretrain is not None:
        pretrain.vision_frozen(entry["family"], f"beam_models.{name}.pretrain")  # a family that cannot: named error
    return entry["family"], dims, pretrain, int(entry.get("seed", 0))


def check_local_files(name: str, entry: dict) -> None:
    """A variant 'local' entry's weights dirs and files look complete (config, weights, tokenizer); loads nothing.
    Raises LVLMConfigError naming the key and the path."""
    module, _, _ = _family(name, entry)
    if entry.get("variant") == "local":
        module.check_local_files(module.config_from_dict(name, _adapter_entry(name, entry)))


def is_pretrained(entry: dict) -> bool:
    """Whether a tiny entry's model is pretrained (``pretrain`` set) rather than left at random init."""
    return entry.get("variant") == "tiny" and entry.get("pretrain") is not None


def local_weight_paths(name: str, entry: dict) -> list[tuple[str, str]]:
    """(config key, path) of the local weights a ``variant: local`` entry reads; none for a tiny variant."""
    module, _, _ = _family(name, entry)
    if entry.get("variant") != "local":
        return []
    missing = [field for field in module.LOCAL_PATH_FIELDS if field not in entry]
    if missing:
        raise ValueError(f"beam_models.{name}.{missing[0]} is required for variant 'local'")
    return [(f"beam_models.{name}.{field}", entry[field]) for field in module.LOCAL_PATH_FIELDS]


def build_tiny_model(name: str, entry: dict, out_dir: str, texts: Iterable[str]) -> None:
    """Materialise the random-init tiny variant of ``beam_models.<name>`` with a word vocabulary over ``texts``."""
    from lever_lm.lvlm.tiny import build_tiny_model_dir

    family, dims, _, seed = tiny_spec(name, entry)
    build_tiny_model_dir(family, out_dir, list(texts), dims, seed)
