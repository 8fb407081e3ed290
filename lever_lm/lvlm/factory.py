"""Build an LVLM adapter (or materialise a tiny model) from a ``beam_models.<name>`` config entry."""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from lever_lm.lvlm.base import LVLMAdapter

# family -> (module, loader, config field that points a tiny variant at its materialised dir)
_FAMILIES = {
    "flamingo": ("lever_lm.lvlm.flamingo", "load_flamingo_adapter", "model_dir"),
    "qwen2_5_vl": ("lever_lm.lvlm.qwen", "load_qwen_adapter", "model_path"),
}


def _family(name: str, entry: dict) -> tuple[Any, str, str]:
    family = entry.get("family")
    if family not in _FAMILIES:
        raise ValueError(f"beam_models.{name}.family: {family!r} is not one of {sorted(_FAMILIES)}")
    module_name, loader, dir_field = _FAMILIES[family]
    return importlib.import_module(module_name), loader, dir_field


def load_adapter(name: str, entry: dict, tiny_model_dir: str | None = None) -> LVLMAdapter:
    """The adapter for ``beam_models.<name>``; a tiny variant loads from ``tiny_model_dir`` like a real model."""
    module, loader, dir_field = _family(name, entry)
    entry = dict(entry)
    if entry.get("variant") == "tiny":
        if tiny_model_dir is None:
            raise ValueError(f"beam_models.{name}: a tiny variant needs its built model dir (rule tiny_lvlm)")
        entry[dir_field] = str(tiny_model_dir)
    return getattr(module, loader)(module.config_from_dict(name, entry))


def parse_config(name: str, entry: dict) -> Any:
    """The family's typed config for ``beam_models.<name>``; unknown or bad fields raise ValueError naming them."""
    module, _, _ = _family(name, entry)
    return module.config_from_dict(name, entry)


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
    """Materialise the tiny variant of ``beam_models.<name>`` with a word vocabulary over ``texts``."""
    from lever_lm.lvlm.tiny_tokenizer import collect_vocabulary

    module, _, _ = _family(name, entry)
    cfg = module.config_from_dict(name, entry)
    module.build_tiny_model_dir(out_dir, collect_vocabulary(texts), cfg.tiny, cfg.seed)
