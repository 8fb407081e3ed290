"""Training of every selector version in a plain PyTorch loop: ``train(cfg, identity, paths, threads)``.

Each beam is one example; batches hold whole anchors (``batch_size`` counts beams), so v3/v4 see an anchor's
beams together. Seeded 90/10 split by anchor; AdamW with a cosine schedule after a linear warm-up (v4: one
warm-up + cosine per phase, the GRPO phase at ``rl.grpo_lr``); gradient norm clipped at 1.

Resume: after every epoch the full training state (weights, optimiser, schedule, history, best weights so
far) is written to ``out_dir/resume/state.ckpt``; a restarted job with the same inputs and config continues
from there. Shuffling depends only on (seed, epoch) and the RNG is reseeded at each epoch start, so a
resumed run ends with exactly the metrics of an uninterrupted one. On success: best.ckpt, last.ckpt, then
metrics.json (last), each atomic, then resume/ is removed. metrics.json holds results only (no durations), so a
resumed run's file is byte-identical to an uninterrupted one's, and so are the checkpoints. Bad input raises
ValueError before anything is written, and any earlier best/last/metrics in out_dir are removed first, so a failed
run never leaves a complete-looking set.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lever_lm.io_utils import read_json, write_json
from lever_lm.selectors import checkpoint as ckpt
from lever_lm.selectors.config import MAX_K, SelectorConfig, TrainIdentity, TrainPaths
from lever_lm.selectors.data import (
    BeamData,
    EpochBatches,
    anchors_per_batch,
    collate,
    load_beam_data,
    load_features,
    split_by_anchor,
)
from lever_lm.selectors.evaluation import batch_metrics, summarize
from lever_lm.selectors.features import parse_feature_choice

logger = logging.getLogger(__name__)

OUTPUTS = ("best.ckpt", "last.ckpt", "metrics.json")
RESUME_STATE = "state.ckpt"
RESUME_FINGERPRINT = "fingerprint.json"
RESUME_FORMAT = 2  # 2: the plain loop's state (1, the Lightning trainer's, is started over)
GRADIENT_CLIP = 1.0


@dataclass
class LRSchedule:
    """Multiplier of the base lr at an optimiser step: linear warm-up, then cosine to 0, per phase.

    A plain callable object, so LambdaLR saves and restores its fields with the resume state.
    """

    steps_per_epoch: int
    epochs: int
    warmup_ratio: float
    rce_epochs: int = -1  # v4 only: the RCE phase's length; the GRPO phase runs at grpo_scale
    grpo_scale: float = 1.0

    @staticmethod
    def _cosine(step: int, total: int, warmup_ratio: float) -> float:
        warmup = math.ceil(warmup_ratio * total) if warmup_ratio > 0 else 0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def __call__(self, step: int) -> float:
        if self.rce_epochs < 0:
            return self._cosine(step, self.epochs * self.steps_per_epoch, self.warmup_ratio)
        rce_steps = self.rce_epochs * self.steps_per_epoch
        if step < rce_steps:
            return self._cosine(step, rce_steps, self.warmup_ratio)
        grpo_steps = (self.epochs - self.rce_epochs) * self.steps_per_epoch
        return self.grpo_scale * self._cosine(step - rce_steps, grpo_steps, self.warmup_ratio)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 0x5E1EC7]).integers(2**62))


def _file_digest(path: str | Path | None) -> str | None:
    from lever_lm.io_utils import file_sha256

    return None if path is None else file_sha256(path)


def _fingerprint(cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths) -> dict[str, Any]:
    """What a resume state must have been made from (config, identity, and the inputs' bytes)."""
    files = {
        name: _file_digest(getattr(paths, name))
        for name in (
            "beams",
            "candidates",
            "train_embeddings_image",
            "train_embeddings_text",
            "train_embeddings_meta",
            "init_checkpoint",
        )
    }
    fingerprint = {
        "state_format": RESUME_FORMAT,
        "config": cfg.to_dict(),
        "identity": identity.to_dict(),
        "inputs": files,
    }
    return json.loads(json.dumps(fingerprint))


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def _load_init(
    cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths, n_train: int, dims: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """v4 starts from the v3 checkpoint of the same cell; the others take none."""
    if identity.version != "v4":
        if paths.init_checkpoint is not None:
            raise ValueError(f"init_checkpoint: only v4 starts from a checkpoint, got one for {identity.version}")
        return None
    if paths.init_checkpoint is None:
        raise ValueError("init_checkpoint: v4 needs the v3 best.ckpt of the same dataset, beam_model and sampler")
    path = paths.init_checkpoint
    state, meta = ckpt.read_checkpoint(path)
    expect = {
        "version": "v3",
        "dataset": identity.dataset,
        "beam_model": identity.beam_model,
        "sampler": identity.sampler,
        "ex_name": identity.ex_name,
        "lever_lm": identity.lever_lm,
        "n_train": n_train,
        "feature_dims": dims,
    }
    ckpt.check_expected(path, meta, expect)
    wanted = cfg.model_params("v4")
    for key in sorted(set(wanted) | set(meta["model"])):
        if meta["model"].get(key, "<missing>") != wanted.get(key, "<missing>"):
            raise ValueError(
                f"{path}: model.{key} = {meta['model'].get(key, '<missing>')!r} but the selector "
                f"config gives {wanted.get(key, '<missing>')!r} for v4"
            )
    return state, meta


def train(
    cfg: SelectorConfig,
    identity: TrainIdentity,
    paths: TrainPaths,
    threads: int = 1,
    *,
    on_epoch_start: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one selector; returns the metrics written to ``out_dir/metrics.json`` plus how the run went
    (``train_examples_per_s``, ``wall_time_s``, ``resumed_after_epoch``, per-epoch ``timing``; not in the file).

    ``on_epoch_start(epoch)``: called as each epoch (0-based) starts (tests raise from it: a job killed between
    epochs).
    """
    import torch

    if not isinstance(cfg, SelectorConfig):
        raise ValueError(f"cfg must be a SelectorConfig, got {type(cfg).__name__}")
    out_dir = Path(paths.out_dir)
    _remove([out_dir / name for name in OUTPUTS])
    from lever_lm.determinism import deterministic

    # threads and deterministic kernels pinned for the run; the caller's RNG stream is left as it was
    with deterministic(threads), torch.random.fork_rng(devices=[]):
        return _train(cfg, identity, paths, out_dir, on_epoch_start)


def _train(
    cfg: SelectorConfig,
    identity: TrainIdentity,
    paths: TrainPaths,
    out_dir: Path,
    on_epoch_start: Callable[[int], None] | None,
) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    version = identity.version
    choice = parse_feature_choice(identity.lever_lm)
    features, embedding_meta = load_features(paths)
    n_train, dims = len(features), features.dims
    data = load_beam_data(cfg, identity, paths, n_train)
    init = _load_init(cfg, identity, paths, n_train, dims)

    train_idx, val_idx = split_by_anchor(len(data.examples), cfg.val_ratio, cfg.seed)
    params = cfg.model_params(version)
    max_len = max(MAX_K, data.shot_num)
    torch.manual_seed(cfg.seed)
    model = ckpt.build_model(version, params, n_train, choice, dims, max_len)
    frozen = {}
    if init is not None:  # v4: policy, frozen v3 reference and epoch-start (old) policy all start as v3
        frozen = {name: ckpt.build_model(version, params, n_train, choice, dims, max_len) for name in ("ref", "old")}
        for net in (model, *frozen.values()):
            net.load_state_dict(init[0])
    icd = features.matrix(choice.icd)
    for net in (model, *frozen.values()):
        if icd is not None:
            net.set_icd_features(torch.from_numpy(icd))

    meta = {
        "format": ckpt.FORMAT,
        "format_version": ckpt.FORMAT_VERSION,
        **identity.to_dict(),
        "construct_order": data.construct_order,
        "shot_num": data.shot_num,
        "max_k": max_len,
        "n_train": n_train,
        "feature_dims": dims,
        "query_dim": choice.query_dim(dims),
        "icd_dim": choice.icd_dim(dims),
        "encoder_id": str(embedding_meta.get("encoder_id")),
        "model": params,
        "selector_config": cfg.to_dict(),
        "beams_params": data.params,
        "init_checkpoint": None
        if init is None
        else {"path": str(paths.init_checkpoint), "epoch": init[1].get("epoch")},
    }
    meta = json.loads(json.dumps(meta))  # plain str/int/float/list/dict only

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the job's one GPU (resources: gpu=1)
    run = _SelectorRun(version, model, frozen, cfg, data, train_idx, val_idx, features.matrix(choice.query), device)
    resume_dir = out_dir / "resume"
    resume_from = _resume_state(resume_dir, _fingerprint(cfg, identity, paths))
    logger.info(
        "training %s (%s) on %s: %d train / %d val anchors, %d epochs%s",
        version,
        identity.lever_lm,
        device,
        train_idx.size,
        val_idx.size,
        cfg.total_epochs(version),
        f", resuming from {resume_from}" if resume_from else "",
    )
    run.fit(cfg.total_epochs(version), resume_dir / RESUME_STATE, resume_from, on_epoch_start)
    return _write_outputs(run, meta, data, train_idx, val_idx, out_dir, started, resume_from is not None)


def _resume_state(resume_dir: Path, fingerprint: dict[str, Any]) -> Path | None:
    """The resume state to continue from, or None (then a fresh resume/ with this run's fingerprint)."""
    state, stamp = resume_dir / RESUME_STATE, resume_dir / RESUME_FINGERPRINT
    if state.is_file() and stamp.is_file():
        try:
            if read_json(stamp) == fingerprint:
                logger.info("resuming from %s", state)
                return state
        except ValueError:
            pass
        logger.warning("%s was made from other inputs or config: starting over", resume_dir)
    if resume_dir.exists():
        shutil.rmtree(resume_dir)
    write_json(stamp, fingerprint)
    return None


class _SelectorRun:
    """One selector's training: the model, its optimiser and schedule, the per-epoch history and the best weights so
    far. ``fit`` runs the epochs, each: reseed, training batches (forward, backward, gradient clipping, AdamW step,
    schedule step), validation in eval mode, the history entry, the resume state.

    A plain loop on the job's one device: a PyTorch Lightning trainer did the same, but importing Lightning (through
    torchmetrics: torchvision's models, transformers) cost ~3.5 s of a ~8 s job, 40 times in the toy matrix.
    """

    def __init__(
        self,
        version: str,
        model: Any,
        frozen: dict[str, Any],
        cfg: SelectorConfig,
        data: BeamData,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        query_features: np.ndarray,
        device: Any,
    ) -> None:
        self.version, self.cfg, self.data = version, cfg, data
        self.version_mod = ckpt.version_module(version)
        self.device = device
        self.model = model.to(device)
        # v4: the frozen v3 policy and the epoch-start (old) policy; neither is saved (but "old" in the resume
        # state) nor optimised
        self.frozen = {name: net.to(device).eval().requires_grad_(False) for name, net in frozen.items()}
        self.train_idx, self.val_idx, self.query_features = train_idx, val_idx, query_features
        self.history: list[dict[str, Any]] = []
        self.timing: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.random: dict[str, Any] | None = None
        self.resumed_after: int | None = None
        self.optimizer, self.scheduler = self._optimiser()

    # ---- data
    def _loader(self, items: np.ndarray, shuffle: bool) -> Any:
        import torch

        size = anchors_per_batch(self.data.examples, self.cfg.batch_size)
        # the epoch = completed epochs in the history, read when an epoch's iteration starts (fresh or resumed)
        batches = EpochBatches(items, size, self.cfg.seed, shuffle, lambda: len(self.history))
        return torch.utils.data.DataLoader(
            self.data.examples,
            batch_sampler=batches,
            num_workers=0,
            collate_fn=lambda batch: collate(batch, self.query_features),
            generator=torch.Generator(),  # its own seed draw, so the global RNG (dropout) is left alone
        )

    # ---- optimisation
    def _optimiser(self) -> tuple[Any, Any]:
        import torch

        cfg, version = self.cfg, self.version
        lr = cfg.rl.rce_lr if version == "v4" else cfg.lr
        # the similarity prior's few scalars (logit scale ~10) are not decayed, and may get a rate of their own
        prior = getattr(self.model, "prior", None)
        prior_ids = {id(p) for p in prior.parameters()} if prior is not None else set()
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in prior_ids]}]
        if prior is not None:
            own_rate = {} if cfg.similarity_prior.lr is None else {"lr": cfg.similarity_prior.lr}
            groups.append({"params": list(prior.parameters()), "weight_decay": 0.0, **own_rate})
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = len(self._loader(self.train_idx, shuffle=True))
        schedule = LRSchedule(steps_per_epoch, cfg.total_epochs(version), cfg.warmup_ratio)
        if version == "v4":
            schedule.rce_epochs, schedule.grpo_scale = cfg.rl.rce_epochs, cfg.rl.grpo_lr / lr
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def _loss(self, batch: dict[str, Any], epoch: int, training: bool) -> Any:
        if self.version != "v4":
            return self.version_mod.loss(self.model, batch, self.cfg)
        if not training:
            return self.version_mod.validation_loss(self.model, batch, self.cfg)
        return self.version_mod.loss(self.model, batch, self.cfg, epoch, **self.frozen)

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {key: value.to(self.device) for key, value in batch.items()}

    # ---- the loop
    def fit(
        self,
        epochs: int,
        state_path: Path,
        resume_from: Path | None,
        on_epoch_start: Callable[[int], None] | None = None,
    ) -> None:
        import torch

        if resume_from is not None:
            self._load_state(resume_from)
        train_loader = self._loader(self.train_idx, shuffle=True)
        val_loader = self._loader(self.val_idx, shuffle=False) if self.val_idx.size else None
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        for epoch in range(len(self.history), epochs):
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            torch.manual_seed(epoch_seed(self.cfg.seed, epoch))  # dropout depends on (seed, epoch) only
            if self.frozen and epoch == self.cfg.rl.rce_epochs:  # the GRPO phase starts
                self.frozen["old"].load_state_dict(self.model.state_dict())
            self.model.train()
            train_sum, train_n, train_seconds = 0.0, 0, 0.0
            for batch in train_loader:
                batch_started = time.perf_counter()
                batch = self._on_device(batch)
                loss = self._loss(batch, epoch, training=True)
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
                self.optimizer.step()
                self.scheduler.step()
                n = int(batch["beam_mask"].sum())
                train_sum += float(loss.detach()) * n
                train_n += n
                train_seconds += time.perf_counter() - batch_started
            val_sum, val_n, val_rows = 0.0, 0, []
            if val_loader is not None:
                self.model.eval()
                with torch.inference_mode():
                    for batch in val_loader:
                        batch = self._on_device(batch)
                        n = int(batch["beam_mask"].sum())
                        val_sum += float(self._loss(batch, epoch, training=False)) * n
                        val_n += n
                        val_rows.extend(batch_metrics(self.model, batch, self.cfg.top_k))
            self._end_epoch(epoch, train_sum / max(1, train_n), train_n, train_seconds, val_sum, val_n, val_rows)
            self._save_state(state_path)

    def _end_epoch(
        self,
        epoch: int,
        train_loss: float,
        train_n: int,
        train_seconds: float,
        val_sum: float,
        val_n: int,
        val_rows: list[Any],
    ) -> None:
        if epoch != len(self.history):
            raise RuntimeError(f"epoch {epoch} but {len(self.history)} epochs recorded: resume state out of sync")
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if self.version == "v4":
            entry["phase"] = self.version_mod.phase(epoch, self.cfg.rl)
        val_loss = None
        if val_n:
            val_loss = val_sum / val_n
            summary = summarize(val_rows)
            entry["val_loss"] = val_loss
            entry.update({f"val_{k}": v for k, v in summary.items() if not k.startswith("random_")})
            self.random = {k.removeprefix("random_"): v for k, v in summary.items() if k.startswith("random_")}
        self.history.append(entry)
        logger.info(
            "epoch %d/%d %s",
            epoch + 1,
            self.cfg.total_epochs(self.version),
            " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items() if k != "epoch"),
        )
        self.timing.append(
            {
                "epoch": epoch + 1,
                "train_seconds": train_seconds,
                "train_examples": train_n,
                "train_examples_per_s": train_n / max(train_seconds, 1e-9),
            }
        )
        if self.best is None or val_loss is None or val_loss < self.best["val_loss"]:
            self.best = {
                "epoch": epoch + 1,
                "val_loss": val_loss,
                "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            }

    # ---- resume state: tensors, numbers, strings and lists only, loaded with weights_only (no planted pickle)
    def _save_state(self, path: Path) -> None:
        import torch

        from lever_lm.io_utils import atomic_path

        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "timing": self.timing,
            "best": self.best,
            "random": self.random,
        }
        if self.frozen:  # v4: the GRPO phase's old policy (a resumed run cannot rebuild it otherwise)
            state["old"] = self.frozen["old"].state_dict()
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(state, tmp)

    def _load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history, self.timing, self.best, self.random = (
            state["history"],
            state["timing"],
            state["best"],
            state["random"],
        )
        if self.frozen:
            self.frozen["old"].load_state_dict(state["old"])
        self.resumed_after = len(self.history)


def _write_outputs(
    run: _SelectorRun,
    meta: dict[str, Any],
    data: BeamData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    out_dir: Path,
    started: float,
    resumed: bool,
) -> dict[str, Any]:
    history, best = run.history, run.best
    last_state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    final_epoch = history[-1]["epoch"]
    ckpt.save_checkpoint(
        out_dir / "best.ckpt",
        best["state"],
        {**meta, "checkpoint": "best", "epoch": best["epoch"], "val_loss": best["val_loss"]},
    )
    ckpt.save_checkpoint(
        out_dir / "last.ckpt",
        last_state,
        {**meta, "checkpoint": "last", "epoch": final_epoch, "val_loss": history[-1].get("val_loss")},
    )

    def n_examples(positions: np.ndarray) -> int:
        return int(sum(len(data.examples[i].choices) for i in positions))

    timing = run.timing
    train_seconds = sum(t["train_seconds"] for t in timing)
    metrics = {
        "identity": {k: meta[k] for k in ("dataset", "beam_model", "sampler", "ex_name", "version", "lever_lm")},
        "beams_params": meta["beams_params"],
        "selector_config": meta["selector_config"],
        "model": meta["model"],
        "n_train_icds": meta["n_train"],
        "n_anchors": {"train": int(train_idx.size), "val": int(val_idx.size)},
        "n_examples": {"train": n_examples(train_idx), "val": n_examples(val_idx)},
        "dropped_negative_beams": data.n_dropped,
        "epochs": history,
        "best": {"epoch": best["epoch"], "val_loss": best["val_loss"]},
        "final": history[-1],
        "random": run.random,
    }
    # how this run went (durations, a resume) is not a result: it goes to the log and the return value, so that
    # metrics.json is byte-identical across clean runs and resumed ones
    run = {
        "train_examples_per_s": sum(t["train_examples"] for t in timing) / max(train_seconds, 1e-9),
        "wall_time_s": time.perf_counter() - started,
        "resumed_after_epoch": run.resumed_after if resumed else None,
        "timing": timing,
    }
    write_json(out_dir / "metrics.json", metrics)  # last: its presence means the outputs are complete
    shutil.rmtree(out_dir / "resume", ignore_errors=True)
    logger.info(
        "run: %.0f train examples/s, %.1f s%s",
        run["train_examples_per_s"],
        run["wall_time_s"],
        f", resumed after epoch {run['resumed_after_epoch']}" if resumed else "",
    )
    return {**metrics, **run}
