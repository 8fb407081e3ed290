"""Pretrain a tiny LVLM on the toy train split so that it learns to take the answer convention from its context.

Public API
- ``PretrainConfig`` (frozen; it lives with the tiny builders in ``lever_lm.lvlm.tiny``, where planning checks
  ``beam_models.<name>.pretrain`` with it): ``PretrainConfig.from_config(section, where)``.
- ``toy_items(train_records)``, ``pretraining_prompts(items, cfg, rng, count=None)``: the interleaved training
  sequences of one batch.
- ``pretrain_tiny_lvlm(family, dims, cfg, train_records, out_dir, seed, threads=1, log=None) -> dict``: builds the
  seeded tiny model of the real architecture, trains it, writes it in the real local layout (the same dir the
  adapters' local loaders read, see ``lever_lm.lvlm.tiny``) and returns the training summary (also stored in the dir).

What is trained (``../shared/toy-benchmark.md``):
- sequences of 0..``max_demos`` demonstrations then a query, all drawn from the TRAIN records only, in exactly the
  adapters' prompt format: the token ids and answer spans come from the adapters' own ``assemble_prompt``;
- the loss is the mean cross-entropy over every answer token plus the token that closes the answer
  (``<|endofchunk|>``; for Qwen the token after the answer in the chat template), demonstrations and query alike;
- the answer convention (word ``red`` or code ``# e``) is drawn AT RANDOM PER SEQUENCE and kept consistent inside
  it: with probability ``shared_convention_p`` one convention for every question type of the sequence, else one
  per question type. The dataset ties the convention to a visible cue, but pretraining ignores the cue on purpose:
  the model must learn to read the convention from its demonstrations, which is what makes demonstrations matter;
- Qwen only: scoring puts the query's answer right after ``Short answer:`` inside the user message, generation
  lets the model answer in the assistant turn (docs/stages.md stage 4, the seed's format); a share ``reply_p`` of the
  sequences has its query answer as that reply, so the model learns both (Flamingo's two formats are one);
- Qwen trains all its parameters, or with ``vision: frozen`` all but its vision tower (see ``_QwenTrainer``);
  Flamingo keeps its vision encoder and perceiver frozen at their seeded random init (see ``_FlamingoTrainer``) and
  trains the language model, its embeddings and the gated cross-attention;
  AdamW, linear warm-up then cosine decay to 0, gradients clipped. The run is deterministic in the seeds (one
  process, fixed thread count);
- ``precision: bf16`` runs the forward under CPU bf16 autocast (matmuls in bf16; weights, AdamW state and the
  loss stay fp32). Measured here (1 thread): Flamingo-tiny 0.34 -> 0.21 s/step, Qwen-tiny no faster (its
  attention backward is slower in bf16). The models it trains are not the fp32 ones: the default config adopted it
  for Flamingo-tiny after checking the toy's headlines over 3 pretraining seeds (README, Replicates).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lever_lm.lvlm.base import Example, Prompt
from lever_lm.lvlm.tiny import FAMILIES, PretrainConfig

# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _ToyItem:
    image_path: str
    question: str
    question_type: str
    value: str


def toy_items(records) -> list[_ToyItem]:
    """The train records as (image, question, question type, value); the label's own convention is dropped."""
    from lever_lm.toy.data import family_of, parse_answer

    items = []
    for row in records.itertuples(index=False):
        try:
            question_type, _ = family_of(row.question, row.label)
        except ValueError as err:
            raise ValueError(
                f"pretraining needs the toy dataset: record question_id {row.question_id}: {err}"
            ) from None
        items.append(_ToyItem(str(row.image_path), str(row.question), question_type, parse_answer(row.label)[0]))
    return items


def pretraining_prompts(
    items: Sequence[_ToyItem], cfg: PretrainConfig, rng: np.random.Generator, count: int | None = None
) -> list[Prompt]:
    """``count`` (default ``cfg.batch_size``) sequences: 0..max_demos demonstrations (other images than the query's)
    then a query, every answer in the sequence's conventions (see the module docstring)."""
    from lever_lm.toy.data import CONVENTIONS, QUESTIONS, answer_for

    prompts = []
    for _ in range(cfg.batch_size if count is None else count):
        if rng.random() < cfg.shared_convention_p:
            convention = CONVENTIONS[int(rng.integers(2))]
            conventions = {question_type: convention for question_type in QUESTIONS}
        else:
            conventions = {question_type: CONVENTIONS[int(rng.integers(2))] for question_type in QUESTIONS}
        query = items[int(rng.integers(len(items)))]
        n_demos = int(rng.integers(cfg.max_demos + 1))
        demos: list[_ToyItem] = []
        while len(demos) < n_demos:
            demo = items[int(rng.integers(len(items)))]
            if demo.image_path != query.image_path and demo not in demos:
                demos.append(demo)

        def example(item: _ToyItem) -> Example:
            return Example(item.image_path, item.question, answer_for(item.value, conventions[item.question_type]))

        prompts.append(Prompt(tuple(example(d) for d in demos), example(query)))
    return prompts


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------- families


class _QwenTrainer:
    """Tiny Qwen2.5-VL: the real model class, its vision tower and rope index; prompts from ``qwen.assemble_prompt``.

    With ``frozen_vision`` the vision tower (patch embedding, blocks and merger) stays at its seeded init, as
    Flamingo's vision side does: every train image is encoded once, and a step runs the language model on the
    embeddings with those features in the image-token slots and the 3-D rope positions computed on the host (the
    model's own forward with the same images gives the same hidden states; tests compare them). A step then costs
    ~25% less, and pretraining seeds 0-2 all left the loss plateau (README, Replicates).
    """

    def __init__(self, words, dims, seed: int, image_paths: Sequence[str], frozen_vision: bool = False):
        import torch

        from lever_lm.lvlm.qwen import QwenVLAdapter, config_from_dict
        from lever_lm.lvlm.tiny import new_tiny_qwen

        self.model, self.processor = new_tiny_qwen(words, dims, seed)
        self.model.train()
        # the adapter lends its prompt assembly and image preprocessing or encoding (the code scoring uses)
        self.adapter = QwenVLAdapter(
            config_from_dict("pretrain", {"variant": "tiny", "precision": "fp32"}), self.model, self.processor
        )
        paths = list(dict.fromkeys(image_paths))
        self.features: dict[str, tuple] | None = None  # frozen tower: path -> (its image embeddings, grid)
        self.pixels: dict[str, tuple] = {}  # trained tower: path -> (its pixel patches, grid)
        if frozen_vision:
            self.model.model.visual.requires_grad_(False)
            with torch.no_grad():
                self.features = self.adapter.image_features(paths)
            self.counts = {path: embeds.shape[0] for path, (embeds, _) in self.features.items()}
            return
        for first in range(0, len(paths), 64):
            chunk = paths[first : first + 64]
            pixel_values, grid_thw = self.adapter.preprocess_images(chunk)
            counts = grid_thw.prod(-1).tolist()
            for path, patches, grid in zip(chunk, torch.split(pixel_values, counts), grid_thw):
                self.pixels[path] = (patches, grid)
        self.counts = {p: int(g.prod()) // self.adapter.merge_size**2 for p, (_, g) in self.pixels.items()}

    def parameters(self):
        return self.model.parameters()

    def loss(self, prompts: Sequence[Prompt], as_reply: Sequence[bool]):
        import torch

        from lever_lm.lvlm.qwen_vision import grouped_attention

        assembled = [
            self.adapter.assemble(p, self.counts, for_generation=False, answer_as_reply=reply)
            for p, reply in zip(prompts, as_reply)
        ]
        input_ids, attention_mask = self.adapter.pad_batch([a.input_ids for a in assembled], left=False)
        if self.features is not None:
            hidden = self._hidden_from_features(assembled, input_ids, attention_mask)
            return _span_loss(hidden, self.model.lm_head, input_ids, [a.answer_spans for a in assembled])
        paths = [path for a in assembled for path in a.image_paths]
        pixel_values = torch.cat([self.pixels[p][0] for p in paths])
        grid_thw = torch.stack([self.pixels[p][1] for p in paths])
        # the vision tower's attention in one call per chunk length, not one per image (what scoring runs too)
        with grouped_attention(self.model.model.visual):
            hidden = self.adapter.hidden_states(input_ids, attention_mask, pixel_values, grid_thw)
        return _span_loss(hidden, self.model.lm_head, input_ids, [a.answer_spans for a in assembled])

    def _hidden_from_features(self, assembled, input_ids, attention_mask):
        """Last hidden states of right-padded rows, their images' cached features scattered into the image-token
        slots and each row's 3-D rope positions from its own tokens (``mrope_positions``, = ``get_rope_index``)."""
        import torch

        from lever_lm.lvlm.qwen_positions import mrope_positions

        model, image_token_id = self.model, self.model.config.image_token_id
        embeds = model.model.get_input_embeddings()(input_ids)
        image_embeds = torch.cat([self.features[path][0] for a in assembled for path in a.image_paths])
        embeds = embeds.masked_scatter((input_ids == image_token_id).unsqueeze(-1).expand_as(embeds), image_embeds)
        positions = np.ones((3, *input_ids.shape), dtype=np.int64)  # padding: read by no real token (causal)
        for row, item in enumerate(assembled):
            grids = [self.features[path][1].tolist() for path in item.image_paths]
            own = mrope_positions(item.input_ids, image_token_id, grids, self.adapter.merge_size)
            positions[:, row, : len(item.input_ids)] = own
        return model.model(
            input_ids=input_ids,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=torch.from_numpy(positions),
            use_cache=False,
        ).last_hidden_state

    def save(self, out_dir: str, extra: dict) -> None:
        from lever_lm.lvlm.tiny import save_qwen_dir

        self.model.eval()
        save_qwen_dir(out_dir, self.model, self.processor, extra=extra)


class _FlamingoTrainer:
    """Tiny OpenFlamingo (open_flamingo's own ``Flamingo``); prompts from ``flamingo.assemble_prompt``.

    As in OpenFlamingo the vision encoder is frozen; here the perceiver is frozen too, both at their seeded random
    init: open_flamingo fixes the perceiver at 64 latents x 6 layers x 512 inner width, which costs ~7 ms of CPU
    per image forward and backward, too much for a 3-minute budget, while its random features already separate
    the toy values (a linear probe on them reads background and object colour at >= 97%, count at ~70%). The
    perceiver output of every train image is computed once; the language model, its input embeddings and the gated
    cross-attention layers learn to read it.
    """

    def __init__(self, words, dims, seed: int, image_paths: Sequence[str], frozen_vision: bool = True):
        # frozen_vision: the trainers' common signature; always frozen here (PretrainConfig.vision_frozen rejects
        # "trained" for Flamingo when the config is read)
        import torch

        from lever_lm.data import load_image
        from lever_lm.lvlm.tiny import new_tiny_flamingo

        self.tiny = new_tiny_flamingo(words, dims, seed)
        model = self.model = self.tiny.model
        model.requires_grad_(False)
        model.lang_encoder.requires_grad_(True)  # decoder blocks, embeddings and gated cross-attention
        model.train()
        self.tokenizer = self.tiny.tokenizer
        paths = list(dict.fromkeys(image_paths))
        self.latents = {}
        with torch.no_grad():
            for first in range(0, len(paths), 64):
                chunk = paths[first : first + 64]
                pixels = torch.stack([self.tiny.image_processor(load_image(p)) for p in chunk])
                tokens = model.vision_encoder(pixels)[1]
                for path, latents in zip(chunk, model.perceiver(tokens[:, None, None])[:, 0]):
                    self.latents[path] = latents
        self._blocks: dict = {}

    def parameters(self):
        return self.model.parameters()

    def loss(self, prompts: Sequence[Prompt], as_reply: Sequence[bool]):
        import torch

        from lever_lm.lvlm.flamingo import assemble_prompt, distinct_images

        assembled = [assemble_prompt(p, self.tokenizer, with_answer=True, cache=self._blocks) for p in prompts]
        input_ids, attention_mask = self.pad_right(assembled)
        paths, index = distinct_images([a.image_paths for a in assembled])
        media = torch.stack([self.latents[p] for p in paths])  # (U, n, d): each distinct image once
        return _span_loss(
            self._logits(input_ids, attention_mask, media, index), None, input_ids, [a.answer_spans for a in assembled]
        )

    def pad_right(self, assembled):
        """(input_ids, attention_mask) of assembled prompts, right-padded to the longest."""
        import torch

        length = max(len(a.input_ids) for a in assembled)
        input_ids = torch.full((len(assembled), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(assembled), length), dtype=torch.long)
        for row, item in enumerate(assembled):
            input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
            attention_mask[row, : len(item.input_ids)] = 1
        return input_ids, attention_mask

    def _logits(self, input_ids, attention_mask, media, index):
        """Language-model logits with each text token cross-attending only to the latents of its own (most recent)
        image, as open_flamingo's masked cross-attention does, without scoring the other images' latents first:
        ``flamingo.generation_cross_attention`` groups the tokens by image (exact; tests compare it with
        open_flamingo's own forward)."""
        from lever_lm.lvlm.flamingo import generation_cross_attention

        lang = self.model.lang_encoder
        attns = [layer.attn for layer in lang.gated_cross_attn_layers if layer is not None]
        try:
            # right padding: its tokens feed no loss and no real token (causal), so they skip the cross-attention
            with generation_cross_attention(attns, media, index, token_mask=attention_mask):
                for layer in lang._get_decoder_layers():
                    layer.condition_vis_x(media)  # read by nothing but the layer's "is conditioned" check
                return lang(input_ids=input_ids, attention_mask=attention_mask).logits  # conditions media locations
        finally:
            lang.clear_conditioned_layers()

    def save(self, out_dir: str, extra: dict) -> None:
        from lever_lm.lvlm.tiny import save_flamingo_dir

        self.model.eval()
        save_flamingo_dir(out_dir, self.tiny, extra=extra)


def _span_loss(hidden, head, input_ids, spans_per_row):
    """Mean cross-entropy of every answer-span token, each predicted from the position before it.

    ``hidden``: last hidden states, projected by ``head``; or logits already (``head`` None)."""
    import torch

    rows, positions = [], []
    for row, spans in enumerate(spans_per_row):
        for start, end in spans:
            rows += [row] * (end - start)
            positions += list(range(start, end))
    rows_t, positions_t = torch.tensor(rows), torch.tensor(positions)
    states = hidden[rows_t, positions_t - 1]
    logits = (states if head is None else head(states)).float()
    return torch.nn.functional.cross_entropy(logits, input_ids[rows_t, positions_t])


_TRAINERS = {"qwen2_5_vl": _QwenTrainer, "flamingo": _FlamingoTrainer}


def pretrain_tiny_lvlm(
    family: str,
    dims,
    cfg: PretrainConfig,
    train_records,
    out_dir: str,
    seed: int = 0,
    threads: int = 1,
    log: logging.Logger | None = None,
) -> dict:
    """Build, pretrain and save a tiny LVLM of ``family``; ``train_records``: the toy TRAIN split's records.

    ``seed`` initialises the model; ``cfg.seed`` draws the training sequences."""
    import torch

    from lever_lm.toy.data import toy_vocabulary

    log = log or logging.getLogger(__name__)
    if family not in _TRAINERS:
        raise ValueError(f"unknown LVLM family {family!r}; expected one of {FAMILIES}")
    splits = sorted(set(train_records["split"].astype(str)))
    if splits != ["train"]:
        raise ValueError(f"pretraining reads the train split only, got split(s) {splits}")
    torch.set_num_threads(threads)
    started = time.monotonic()
    items = toy_items(train_records)
    texts = [
        *train_records["question"],
        *(a for answers in train_records["answers"] for a in answers),
        *toy_vocabulary(),
    ]
    trainer = _TRAINERS[family](
        texts, dims, seed, [item.image_path for item in items], frozen_vision=cfg.vision_frozen(family)
    )
    parameters = [p for p in trainer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    curve, running = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            prompts = pretraining_prompts(items, cfg, rng)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss = trainer.loss(prompts, [bool(r) for r in rng.random(len(prompts)) < cfg.reply_p])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip)
            optimizer.step()
            running.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                curve.append(
                    {"step": step + 1, "loss": float(np.mean(running)), "seconds": round(time.monotonic() - started, 1)}
                )
                log.info(
                    "pretrain %s step %d/%d loss %.4f (%.0f s)",
                    family,
                    step + 1,
                    cfg.steps,
                    curve[-1]["loss"],
                    curve[-1]["seconds"],
                )
                running = []
    summary = {
        "pretrain": dataclasses.asdict(cfg),
        "model_seed": seed,
        "family": family,
        "threads": threads,
        "train_records": len(items),
        "train_images": len({i.image_path for i in items}),
        "parameters": sum(p.numel() for p in parameters),
        "loss_curve": curve,
        "final_loss": curve[-1]["loss"],
        "train_seconds": round(time.monotonic() - started, 1),
    }
    # the saved record holds no durations, so two clean runs give identical model dirs (they stay in the log)
    record = {key: value for key, value in summary.items() if key != "train_seconds"}
    record["loss_curve"] = [{key: value for key, value in point.items() if key != "seconds"} for point in curve]
    trainer.save(out_dir, extra=record)
    return summary
