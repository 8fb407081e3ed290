"""Pipeline config: JSON-schema validation (with defaults) plus the cross-key checks a schema cannot express.

``schemas/config.schema.yaml`` is the one truth of the config's keys, types, bounds and defaults: ``validate_schema``
validates a config against it and fills its defaults (the Snakefile's rules/common.smk and ``load_config``), and
``validate_section`` does the same for one section (the typed configs built from a section, e.g.
``lever_lm.inference.config.InferenceConfig``). ``check_config`` then runs the cross-key checks. Tests and scripts use
``load_config``, which does both. Every error names the key.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from lever_lm.errors import InputError, one_line

SCHEMA_FILE = "config.schema.yaml"


class ConfigError(InputError):
    """A config value is invalid; the message starts with the dotted key."""


def schema_path() -> Path:
    return Path(str(resources.files("lever_lm") / "schemas" / SCHEMA_FILE))


@functools.cache
def _load_schema() -> dict:
    """The parsed schema, read once; never modify it (defaults are filled as copies)."""
    import yaml

    return yaml.safe_load(schema_path().read_text(encoding="utf-8"))


@functools.cache
def _validator_class(schema_id: str) -> type:
    """The schema's validator class (its ``$schema`` draft), extended so that validating fills defaults: before an
    object's ``properties`` are validated, each absent one with a ``default`` gets a copy of it (the jsonschema FAQ
    recipe), so the defaults inside a defaulted object are filled as well."""
    import jsonschema

    base = jsonschema.validators.validator_for({"$schema": schema_id})
    validate_properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if key not in instance and "default" in sub:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": fill_defaults})


def _dotted(path) -> str:
    return ".".join(str(part) for part in path) or "<root>"


def _validate(instance: Any, schema: dict, prefix: tuple = ()) -> Any:
    """Validate ``instance`` against ``schema``, filling defaults in place; the first error (by key) is raised,
    naming the key (``prefix``: the keys ``instance`` lies under)."""
    validator = _validator_class(_load_schema()["$schema"])(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = (*prefix, *first.absolute_path)
        key = _dotted(path)
        if first.validator == "additionalProperties":
            unknown = sorted(set(first.instance) - set(first.schema.get("properties", {})))
            dot = f"{key}." if path else ""
            raise ConfigError(f"unknown config key {', '.join(dot + u for u in unknown)}")
        raise ConfigError(f"config key {key}: {first.message}")
    return instance


def validate_schema(config: dict) -> dict:
    """Validate against the JSON schema, filling defaults in place; the error names the offending key."""
    schema = _load_schema()
    _coerce_strings(config, schema)
    return _validate(config, schema)


def validate_section(name: str | tuple[str, ...], section: Any) -> dict:
    """One section (``name``: a top-level key such as ``inference``, or the keys of a nested one, e.g.
    ``("beam_models", "m", "pretrain")``; ``section`` None for an absent one) validated against its part of the schema
    with its defaults filled, as ``validate_schema`` does within a whole config: a copy, ``section`` is left as it is.
    Errors name the key as there (``config key inference.shots.0: ...``)."""
    path = (name,) if isinstance(name, str) else tuple(name)
    schema = _load_schema()
    for part in path:
        properties = schema.get("properties", {})
        schema = properties[part] if part in properties else schema["additionalProperties"]
    value = {} if section is None else copy.deepcopy(dict(section) if isinstance(section, Mapping) else section)
    return _validate(value, schema, path)


_SCALAR_PARSERS = {"integer": int, "number": float}


def _coerce_scalar(value: str, types: list[str]) -> Any:
    """A string as the scalar type the schema asks for; unchanged when it does not parse (validation names it)."""
    text = value.strip()
    if "null" in types and text.lower() in ("null", "none", "~"):
        return None
    if "boolean" in types and text.lower() in ("true", "false"):
        return text.lower() == "true"
    for name in ("integer", "number"):
        if name in types:
            try:
                return _SCALAR_PARSERS[name](text)
            except ValueError:
                pass
    return value


def _coerce_strings(instance: Any, schema: dict) -> None:
    """Nested `--config key={a: 8}` values reach the config as strings ('8'); read them as the schema's types."""
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            if isinstance(value, str) and "string" not in _types(sub):
                instance[key] = _coerce_scalar(value, _types(sub))
            else:
                _coerce_strings(value, sub)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for position, value in enumerate(instance):
            if isinstance(value, str) and "string" not in _types(schema["items"]):
                instance[position] = _coerce_scalar(value, _types(schema["items"]))
            else:
                _coerce_strings(value, schema["items"])


def _types(schema: dict) -> list[str]:
    kind = schema.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def check_config(config: dict) -> dict:
    """Cross-key checks; call after schema validation."""
    for role in ("sampler_encoder", "selector_encoder"):
        if config[role] not in config["encoders"]:
            raise ConfigError(
                f"config key {role}: {config[role]!r} is not one of encoders ({', '.join(config['encoders'])})"
            )
    beam = config["beam_search"]
    if config["candidates"]["cand_num"] < beam["beam_size"]:
        raise ConfigError(
            f"config key candidates.cand_num: {config['candidates']['cand_num']} is smaller than "
            f"beam_search.beam_size {beam['beam_size']}"
        )
    if beam["shards"] > config["anchors"]["sample_num"]:
        raise ConfigError(
            f"config key beam_search.shards: {beam['shards']} shards for only {config['anchors']['sample_num']} anchors"
        )
    too_many = [shot for shot in config["inference"]["shots"] if shot > config["candidates"]["cand_num"]]
    if too_many:
        raise ConfigError(
            f"config key inference.shots: {too_many[0]} shots exceed the test pools' size "
            f"(candidates.cand_num {config['candidates']['cand_num']})"
        )
    _check_ceiling(config)
    from lever_lm.paths import SPLITS

    dataset = config["dataset"]
    if "toy" in dataset:
        if dataset["format"] != "okvqa":
            raise ConfigError(
                "config key dataset.toy: the toy dataset is generated in OK-VQA format; set dataset.format: okvqa"
            )
        if "root" not in dataset or dataset.get("files"):
            raise ConfigError(
                "config key dataset.toy: the toy dataset is generated under dataset.root with the standard "
                "names; set dataset.root and leave out dataset.files"
            )
    for split in SPLITS:
        split_layout(dataset, split)
    _check_stage_configs(config)
    return config


def _check_ceiling(config: dict) -> None:
    """The imitation ceiling evaluates shots up to beam_search.shot_num only, and shards its val queries."""
    ceiling = config.get("ceiling", {})
    if not ceiling.get("enabled", True):
        return
    shot_num = config["beam_search"]["shot_num"]
    if not any(shot <= shot_num for shot in config["inference"]["shots"]):
        raise ConfigError(
            f"config key ceiling.enabled: no inference.shots {config['inference']['shots']} is <= "
            f"beam_search.shot_num {shot_num}, so the imitation ceiling has nothing to evaluate; set it to false"
        )
    max_queries = ceiling.get("max_queries")
    if max_queries is not None and ceiling.get("shards", 1) > max_queries:
        raise ConfigError(f"config key ceiling.shards: {ceiling['shards']} shards for only {max_queries} val queries")


def _check_stage_configs(config: dict) -> None:
    """Build each stage's typed config now, so a bad field fails at planning time rather than inside a job."""
    from lever_lm.beam_search import from_pipeline_config
    from lever_lm.ceiling import CeilingConfig
    from lever_lm.embeddings import ClipEncoderConfig
    from lever_lm.inference.config import InferenceConfig
    from lever_lm.lvlm.factory import parse_config
    from lever_lm.sampling import SamplerConfig
    from lever_lm.selectors import SelectorConfig

    try:
        for name, encoder in config["encoders"].items():
            ClipEncoderConfig.from_config(name, encoder)
        SamplerConfig.from_config(config["candidates"])
        from_pipeline_config(config)
        for name, entry in config["beam_models"].items():
            parse_config(name, entry)
        SelectorConfig.from_config(config["selector"])
        InferenceConfig.from_config(inference_params(config), config["task"])
        CeilingConfig.from_config(config.get("ceiling"))
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"config key {err}") from None


def inference_params(config: dict) -> dict:
    """The inference settings every inference job runs with; the baselines list only decides which jobs exist."""
    return {key: value for key, value in config["inference"].items() if key != "baselines"}


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read a YAML config, apply top-level ``overrides``, validate and check it."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: malformed YAML ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    config.update(overrides or {})
    return check_config(validate_schema(config))


def external_paths(config: dict) -> list[tuple[str, str]]:
    """(config key, path) of every input the pipeline reads but does not produce: data files and weights."""
    from lever_lm.lvlm.factory import local_weight_paths
    from lever_lm.paths import SPLITS

    found: list[tuple[str, str]] = []
    dataset = config["dataset"]
    if "toy" not in dataset:
        for split in SPLITS:
            explicit = dataset.get("files", {}).get(split, {})
            files = split_layout(dataset, split)
            found += [
                (f"dataset.files.{split}.{kind}" if kind in explicit else f"dataset.root ({split} {kind})", str(path))
                for kind, path in files.items()
            ]
    for name, encoder in config["encoders"].items():
        if encoder["kind"] != "tiny":
            found.append((f"encoders.{name}.checkpoint", encoder["checkpoint"]))
    for name, entry in config["beam_models"].items():
        try:
            found += local_weight_paths(name, entry)
        except ValueError as err:
            raise ConfigError(f"config key {err}") from None
    return found


def split_layout(dataset: dict, split: str) -> dict:
    """Input paths of one split of the config's ``dataset`` section (explicit ``files`` first, else under ``root``)."""
    from lever_lm.data import DatasetError, layout_paths

    try:
        return layout_paths(
            dataset["format"],
            dataset.get("root"),
            split,
            dataset.get("caption_year", 2014),
            dataset.get("files", {}).get(split),
        )
    except DatasetError as err:
        raise ConfigError(f"config key {err}") from None


def check_external_paths(config: dict) -> None:
    """Fail before planning when configured data or weights paths do not exist, naming every one of them."""
    import os

    missing = [(key, path) for key, path in external_paths(config) if not os.path.exists(path)]
    if len(missing) == 1:
        key, path = missing[0]
        raise ConfigError(f"configured input path does not exist (set it in your config): {key}: {path}")
    if missing:
        lines = "\n".join(f"  {key}: {path}" for key, path in missing)
        raise ConfigError(f"{len(missing)} configured input path(s) do not exist (set them in your config):\n{lines}")


def check_model_files(config: dict) -> None:
    """Fail before planning when configured local weights look incomplete: a model dir without config.json,
    weights or tokenizer files (missing paths are check_external_paths's). Loads nothing."""
    from lever_lm.embeddings import ClipEncoderConfig
    from lever_lm.embeddings import check_local_files as check_encoder_files
    from lever_lm.lvlm.factory import check_local_files as check_lvlm_files

    try:
        for name, encoder in config["encoders"].items():
            if encoder["kind"] != "tiny":
                check_encoder_files(ClipEncoderConfig.from_config(name, encoder))
        for name, entry in config["beam_models"].items():
            check_lvlm_files(name, entry)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"config key {one_line(err)}") from None


def check_cand_num_fits_records(config: dict) -> None:
    """At planning time, when the train records exist: every train question must leave ``candidates.cand_num``
    allowed train ids (``lever_lm.sampling.check_cand_num_fits``). Records older than a raw file they come from
    are skipped (Snakemake rebuilds them, and the records stage runs the same check)."""
    import os

    from lever_lm import paths as P
    from lever_lm.sampling import check_cand_num_fits

    records = Path(P.fill(P.RECORDS, config, split="train"))
    if not records.is_file():
        return
    try:
        raw = [path for path in split_layout(config["dataset"], "train").values() if os.path.exists(path)]
    except ConfigError:
        return
    if any(os.path.getmtime(path) > records.stat().st_mtime for path in raw):
        return
    import pandas as pd

    try:
        table = pd.read_parquet(records, columns=["question_id", "image_id"])
    except Exception:  # an unreadable records file is reported by the stage that reads it
        return
    candidates = config["candidates"]
    try:
        check_cand_num_fits(
            table["image_id"],
            table["question_id"],
            candidates["cand_num"],
            candidates.get("exclude_same_image", True),
            str(records),
        )
    except InputError as err:
        raise ConfigError(str(err)) from None


def check_output_dirs(config: dict) -> None:
    """Fail before planning when outputs cannot be written: ``results/{dataset}``, ``logs/`` or ``benchmarks/``
    (relative to the working directory) lies under a file, or its nearest existing folder is not writable (a
    read-only mount, or permissions for a non-root user). Writes nothing. Raises InputError naming the path."""
    import os

    from lever_lm import paths as P

    for target in (P.fill(P.RESULTS, config), "logs", "benchmarks"):
        existing = Path(target)
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"{target} cannot be created: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(
                f"{target} is not writable: {os.path.abspath(existing)} is read-only or not writable by this user"
            )
