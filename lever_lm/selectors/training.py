"""Training of every selector version with PyTorch Lightning: ``train(cfg, identity, paths, threads)``.

Each beam is one example; batches hold whole anchors (``batch_size`` counts beams), so v3/v4 see an anchor's
beams together. Seeded 90/10 split by anchor; AdamW with a cosine schedule after a linear warm-up (v4: one
warm-up + cosine per phase, the GRPO phase at ``rl.grpo_lr``); gradient norm clipped at 1.

Resume: after every epoch the full Lightning state (weights, optimiser, schedule, history, best weights so
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
import os
import shutil
import time
import warnings
from collections.abc import Sequence
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
GRADIENT_CLIP = 1.0


@dataclass
class LRSchedule:
    """Multiplier of the base lr at an optimiser step: linear warm-up, then cosine to 0, per phase.

    A plain callable object, so LambdaLR can save and restore it with the Lightning state.
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
    return json.loads(json.dumps({"config": cfg.to_dict(), "identity": identity.to_dict(), "inputs": files}))


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
    cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths, threads: int = 1, *, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train one selector; returns the metrics written to ``out_dir/metrics.json`` plus how the run went
    (``train_examples_per_s``, ``wall_time_s``, ``resumed_after_epoch``, per-epoch ``timing``; not in the file).

    ``callbacks``: extra Lightning callbacks (tests use one to kill a run between epochs).
    """
    import torch

    if not isinstance(cfg, SelectorConfig):
        raise ValueError(f"cfg must be a SelectorConfig, got {type(cfg).__name__}")
    out_dir = Path(paths.out_dir)
    if _launching_process():
        _remove([out_dir / name for name in OUTPUTS])
    from lever_lm.determinism import deterministic

    # threads and deterministic kernels pinned for the run; the caller's RNG stream is left as it was
    with deterministic(threads), torch.random.fork_rng(devices=[]):
        return _train(cfg, identity, paths, out_dir, list(callbacks))


def _train(
    cfg: SelectorConfig, identity: TrainIdentity, paths: TrainPaths, out_dir: Path, callbacks: list[Any]
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

    module = _lightning_module(version, model, frozen, cfg, data, train_idx, val_idx, features.matrix(choice.query))
    resume_dir = out_dir / "resume"
    fingerprint = _fingerprint(cfg, identity, paths)
    resume_from = _resume_state(resume_dir, fingerprint)
    module.resume_path = resume_dir / RESUME_STATE

    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = lightning_info.level
    lightning_info.setLevel(logging.WARNING)  # its start-up chatter (accelerator, tips) is noise in job logs
    try:
        trainer = _trainer(cfg.total_epochs(version), resume_dir, val_idx.size > 0, callbacks)
        logger.info(
            "training %s (%s) on %s x%d: %d train / %d val anchors, %d epochs%s",
            version,
            identity.lever_lm,
            type(trainer.accelerator).__name__,
            trainer.num_devices,
            train_idx.size,
            val_idx.size,
            cfg.total_epochs(version),
            f", resuming from {resume_from}" if resume_from else "",
        )
        with warnings.catch_warnings():
            for noise in ("does not have many workers", "num_workers", "log_every_n_steps", "LeafSpec"):
                warnings.filterwarnings("ignore", message=f".*{noise}.*")
            # weights_only: the resume state holds tensors, numbers and lists only, so a planted pickle is refused
            trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    finally:
        lightning_info.setLevel(level)
    if not trainer.is_global_zero:
        return {}
    return _write_outputs(module, meta, data, train_idx, val_idx, out_dir, started, resume_from is not None)


def _launching_process() -> bool:
    """False in the extra processes Lightning's DDP launcher starts (they re-run the script: only the first
    process may delete or create files before training)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


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
    if not _launching_process():
        return None
    if resume_dir.exists():
        shutil.rmtree(resume_dir)
    write_json(stamp, fingerprint)
    return None


def _trainer(max_epochs: int, resume_dir: Path, has_val: bool, callbacks: list[Any]) -> Any:
    import pytorch_lightning as pl
    import torch

    n_gpus = torch.cuda.device_count()
    if n_gpus > 1:
        hardware = {"accelerator": "gpu", "devices": n_gpus, "strategy": "ddp"}
    elif n_gpus == 1:
        hardware = {"accelerator": "gpu", "devices": 1}
    else:
        hardware = {"accelerator": "cpu", "devices": 1}
    return pl.Trainer(
        **hardware,
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(resume_dir),
        limit_val_batches=1.0 if has_val else 0,
        use_distributed_sampler=False,
        gradient_clip_val=GRADIENT_CLIP,
        callbacks=callbacks,
    )


def _lightning_module(
    version: str,
    model: Any,
    frozen: dict[str, Any],
    cfg: SelectorConfig,
    data: BeamData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    query_features: np.ndarray,
) -> Any:
    import pytorch_lightning as pl
    import torch

    version_mod = ckpt.version_module(version)

    class SelectorModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # v4: the frozen v3 policy and the epoch-start (old) policy; a plain dict, so neither is saved
            # nor optimised
            self.frozen = {name: net.eval().requires_grad_(False) for name, net in frozen.items()}
            self.history: list[dict[str, Any]] = []
            self.timing: list[dict[str, Any]] = []
            self.best: dict[str, Any] | None = None
            self.resume_path: Path | None = None

        # ---- data
        def _batches(self, items: np.ndarray, shuffle: bool) -> EpochBatches:
            size = anchors_per_batch(data.examples, cfg.batch_size)
            rank, world = (self.global_rank, self.trainer.world_size) if shuffle else (0, 1)
            # the epoch = completed epochs in our history, which is right whenever Lightning builds the
            # iterator (before or after on_train_epoch_start, fresh or resumed)
            return EpochBatches(items, size, cfg.seed, shuffle, lambda: len(self.history), rank, world)

        def _loader(self, items: np.ndarray, shuffle: bool) -> Any:
            return torch.utils.data.DataLoader(
                data.examples,
                batch_sampler=self._batches(items, shuffle),
                num_workers=0,
                collate_fn=lambda batch: collate(batch, query_features),
                generator=torch.Generator(),  # its own seed draw, so the global RNG (dropout) is left alone
            )

        def train_dataloader(self) -> Any:
            return self._loader(train_idx, shuffle=True)

        def val_dataloader(self) -> Any:
            return self._loader(val_idx, shuffle=False) if val_idx.size else []

        # ---- optimisation
        def configure_optimizers(self) -> Any:
            lr = cfg.rl.rce_lr if version == "v4" else cfg.lr
            # the similarity prior's few scalars (logit scale ~10) are not decayed, and may get a rate of their own
            prior = getattr(self.model, "prior", None)
            prior_ids = {id(p) for p in prior.parameters()} if prior is not None else set()
            groups = [{"params": [p for p in self.model.parameters() if id(p) not in prior_ids]}]
            if prior is not None:
                own_rate = {} if cfg.similarity_prior.lr is None else {"lr": cfg.similarity_prior.lr}
                groups.append({"params": list(prior.parameters()), "weight_decay": 0.0, **own_rate})
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
            steps_per_epoch = len(self._batches(train_idx, shuffle=True))  # per rank
            schedule = LRSchedule(steps_per_epoch, cfg.total_epochs(version), cfg.warmup_ratio)
            if version == "v4":
                schedule.rce_epochs, schedule.grpo_scale = cfg.rl.rce_epochs, cfg.rl.grpo_lr / lr
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def _loss(self, batch: dict[str, Any], training: bool) -> Any:
            if version != "v4":
                return version_mod.loss(self.model, batch, cfg)
            if not training:
                return version_mod.validation_loss(self.model, batch, cfg)
            return version_mod.loss(self.model, batch, cfg, self.current_epoch, **self.frozen)

        # ---- hooks, in the order Lightning calls them within an epoch
        def on_fit_start(self) -> None:
            for net in self.frozen.values():
                net.to(self.device)

        def on_train_epoch_start(self) -> None:
            torch.manual_seed(epoch_seed(cfg.seed, self.current_epoch))  # dropout depends on (seed, epoch) only
            if self.frozen and self.current_epoch == cfg.rl.rce_epochs:  # the GRPO phase starts
                self.frozen["old"].load_state_dict(self.model.state_dict())
            self._train_sum, self._train_n, self._train_seconds = 0.0, 0, 0.0
            self._val_sum, self._val_n, self._val_rows = 0.0, 0, []

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self._batch_started = time.perf_counter()

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
            loss = self._loss(batch, training=True)
            n = int(batch["beam_mask"].sum())
            self._train_sum += float(loss.detach()) * n
            self._train_n += n
            return loss

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self._train_seconds += time.perf_counter() - self._batch_started

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            n = int(batch["beam_mask"].sum())
            self._val_sum += float(self._loss(batch, training=False)) * n
            self._val_n += n
            self._val_rows.extend(batch_metrics(self.model, batch, cfg.top_k))

        def on_train_epoch_end(self) -> None:
            epoch = self.current_epoch
            if epoch != len(self.history):
                raise RuntimeError(f"epoch {epoch} but {len(self.history)} epochs recorded: resume state out of sync")
            train_loss = self.trainer.strategy.reduce(
                torch.tensor(self._train_sum / max(1, self._train_n), device=self.device), reduce_op="mean"
            )
            entry: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": float(train_loss),
                "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            }
            if version == "v4":
                entry["phase"] = version_mod.phase(epoch, cfg.rl)
            val_loss = None
            if self._val_n:
                val_loss = self._val_sum / self._val_n
                summary = summarize(self._val_rows)
                entry["val_loss"] = val_loss
                entry.update({f"val_{k}": v for k, v in summary.items() if not k.startswith("random_")})
                self.random = {k.removeprefix("random_"): v for k, v in summary.items() if k.startswith("random_")}
            self.history.append(entry)
            logger.info(
                "epoch %d/%d %s",
                epoch + 1,
                cfg.total_epochs(version),
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items() if k != "epoch"
                ),
            )
            self.timing.append(
                {
                    "epoch": epoch + 1,
                    "train_seconds": self._train_seconds,
                    "train_examples": self._train_n,
                    "train_examples_per_s": self._train_n / max(self._train_seconds, 1e-9),
                }
            )
            if self.best is None or val_loss is None or val_loss < self.best["val_loss"]:
                self.best = {
                    "epoch": epoch + 1,
                    "val_loss": val_loss,
                    "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                }
            self._save_resume_state()

        def _save_resume_state(self) -> None:
            from lever_lm.io_utils import atomic_path

            if self.trainer.is_global_zero:
                with atomic_path(self.resume_path, suffix=".ckpt") as tmp:
                    self.trainer.save_checkpoint(tmp, weights_only=False)
            else:
                self.trainer.save_checkpoint(self.resume_path, weights_only=False)  # collective; rank 0 writes

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint["lever_selector"] = {
                "history": self.history,
                "timing": self.timing,
                "best": self.best,
                "random": getattr(self, "random", None),
            }
            if self.frozen:  # v4: the GRPO phase's old policy (a resumed run cannot rebuild it otherwise)
                checkpoint["lever_selector"]["old"] = self.frozen["old"].state_dict()

        def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            saved = checkpoint["lever_selector"]
            self.history, self.timing, self.best = saved["history"], saved["timing"], saved["best"]
            self.random = saved["random"]
            if self.frozen:
                self.frozen["old"].load_state_dict(saved["old"])
            self.resumed_after = len(self.history)

    return SelectorModule()


def _write_outputs(
    module: Any,
    meta: dict[str, Any],
    data: BeamData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    out_dir: Path,
    started: float,
    resumed: bool,
) -> dict[str, Any]:
    history, best = module.history, module.best
    last_state = {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
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

    timing = module.timing
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
        "random": getattr(module, "random", None),
    }
    # how this run went (durations, a resume) is not a result: it goes to the log and the return value, so that
    # metrics.json is byte-identical across clean runs and resumed ones
    run = {
        "train_examples_per_s": sum(t["train_examples"] for t in timing) / max(train_seconds, 1e-9),
        "wall_time_s": time.perf_counter() - started,
        "resumed_after_epoch": getattr(module, "resumed_after", None) if resumed else None,
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
