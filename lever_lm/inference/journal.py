"""The resume journal of an inference job.

Resume: a job appends every generated batch (shot, batch index, the prompts in it, their raw outputs) as one fsynced
json line to ``<predictions>.partial.jsonl``, next to its outputs but NOT a rule output (Snakemake deletes the
declared outputs of a failed job, never this file). Its first line is the job's fingerprint: the sha256 of every
input (records, embeddings, test pool, checkpoint, the LVLM's weights), the inference config, the identity and the
model entry. A rerun with the same fingerprint takes the batches already done from it and generates only the rest,
with the very same batches (generation order and batch composition do not depend on what was done before; the
config in the fingerprint includes ``token_budget`` when set, so batches of another plan are never reused), so
``metrics.json`` and ``predictions.parquet`` come out byte-identical to an uninterrupted run. A torn last line (a
killed writer) is cut; a file with another fingerprint (other inputs or config) is discarded with a warning. The
file is removed once both outputs are written. Edits to the package's code are not part of the fingerprint (nor of
Snakemake's rerun triggers, README "Rerun policy"): after changing generation code, delete the ``.partial.jsonl``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lever_lm.inference.config import config_digest

if TYPE_CHECKING:
    from lever_lm.inference.inputs import InferenceInputs

log = logging.getLogger("lever_lm.inference")  # one logger for the package: log lines say [lever_lm.inference]


def journal_path(predictions_path: str | os.PathLike) -> Path:
    """The resume file of a job: ``<predictions>.partial.jsonl`` (never a declared Snakemake output)."""
    path = Path(predictions_path)
    return path.with_name(path.name + ".partial.jsonl")


class InferenceJournal:
    """Append-only resume file of one inference job (see the module docstring).

    Line 1 ``{"fingerprint": ...}``; then one ``{"shot", "batch", "prompts", "raw"}`` line per generated batch, each
    flushed and fsynced, so a killed job loses at most the batch in flight.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: str, logger: logging.Logger | None = None) -> None:
        from lever_lm.io_utils import append_jsonl, cut_torn_tail, read_jsonl

        self.path = Path(path)
        self.fingerprint = fingerprint
        self._done: dict[int, dict[int, tuple[list[int], list[str]]]] = {}
        logger = logger or log
        keep = False
        if self.path.is_file():
            cut_torn_tail(self.path)
            try:
                lines = read_jsonl(self.path)
            except (ValueError, UnicodeDecodeError):
                lines = []
            if lines and lines[0] == {"fingerprint": fingerprint}:
                keep = True
                for line in lines[1:]:  # a batch generated twice (never expected): the later line wins
                    self._done.setdefault(int(line["shot"]), {})[int(line["batch"])] = (
                        [int(i) for i in line["prompts"]],
                        [str(t) for t in line["raw"]],
                    )
                logger.info("resuming from %s: %d batch(es) done", self.path, sum(len(b) for b in self._done.values()))
            elif self.path.stat().st_size:
                logger.warning("%s was made from other inputs or config: starting over", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a" if keep else "w", encoding="utf-8")
        self._append = append_jsonl
        if not keep:
            append_jsonl(self._handle, {"fingerprint": fingerprint})

    def batches(self, shot: int) -> dict[int, tuple[list[int], list[str]]]:
        return dict(self._done.get(int(shot), {}))

    def record(self, shot: int, batch: int, prompts: Sequence[int], raw: Sequence[str]) -> None:
        self._append(
            self._handle,
            {
                "shot": int(shot),
                "batch": int(batch),
                "prompts": [int(i) for i in prompts],
                "raw": [str(t) for t in raw],
            },
        )

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> InferenceJournal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def job_fingerprint(inputs: InferenceInputs, extra_files: Mapping[str, Any], **parts: Any) -> str:
    """What decides a job's results: every input's bytes (weights of 256 MiB+ by size and mtime) and ``parts``."""
    from lever_lm.io_utils import inputs_fingerprint

    files = {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}
    files.update({f"{split}_meta": inputs.meta_path(split) for split in ("train", "val")})
    files.update(extra_files)
    return config_digest(inputs=inputs_fingerprint(files), **parts)


def all_from_journal(done: Mapping[int, tuple[Sequence[int], Sequence[str]]], n: int) -> list[str] | None:
    """The raw outputs of all ``n`` prompts when ``done`` holds batches 0..m-1 that together hold every position once
    (each with its texts); else None."""
    if not n or sorted(done) != list(range(len(done))) or any(len(b) != len(t) for b, t in done.values()):
        return None
    out: dict[int, str] = {int(i): str(text) for batch, texts in done.values() for i, text in zip(batch, texts)}
    count = sum(len(batch) for batch, _ in done.values())
    return [out[i] for i in range(n)] if count == n and sorted(out) == list(range(n)) else None
