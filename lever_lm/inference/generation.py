"""Batched generation: ``plan_generation_batches`` (by prompt size, or by a token budget) and ``generate_answers``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lever_lm.lvlm.base import LVLMAdapter, Prompt


def _prompt_size(prompt: Prompt) -> tuple[int, int]:
    examples = (*prompt.demos, prompt.query)
    return len(examples), sum(len(e.question) + len(e.answer or "") for e in examples)


def plan_generation_batches(
    adapter: LVLMAdapter,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    num_beams: int,
    batch_size: int,
    token_budget: int | None = None,
) -> list[list[int]]:
    """Generation batches, as lists of prompt positions; deterministic for given prompts and settings (resume needs
    the same batches again).

    ``token_budget`` None: prompts sorted by size (image count, text length), ``batch_size`` at a time. With a
    budget: ``base.plan_batches`` over each prompt's cost ``(prompt tokens + max_new_tokens) x num_beams``
    (``adapter.prompt_token_lengths``: tokens as the language model sees them), so a batch holds at most
    ``batch_size`` prompts and ``rows x (longest prompt + max_new_tokens) x num_beams`` stays within the budget: the
    key/value cache of the batch's beams at the last step, what memory scales with. Prompts are sorted by token
    length, so batch-mates pad little; a prompt over the budget runs alone.
    """
    from lever_lm.lvlm.base import plan_batches

    if batch_size < 1:
        raise ValueError(f"inference.batch_size: expected >= 1, got {batch_size}")
    keys = [_prompt_size(p) for p in prompts]
    if token_budget is None:
        return plan_batches([0] * len(prompts), keys, batch_size, None)
    if isinstance(token_budget, bool) or token_budget < 1:
        raise ValueError(f"inference.token_budget: expected an integer >= 1 or null, got {token_budget!r}")
    lengths = adapter.prompt_token_lengths(prompts)
    if len(lengths) != len(prompts):
        raise RuntimeError(f"adapter.prompt_token_lengths returned {len(lengths)} lengths for {len(prompts)} prompts")
    costs = [(int(n) + max_new_tokens) * num_beams for n in lengths]
    return plan_batches(costs, keys, batch_size, token_budget)


def generate_answers(
    adapter: LVLMAdapter,
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    num_beams: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    done: Mapping[int, tuple[Sequence[int], Sequence[str]]] | None = None,
    on_batch: Callable[[int, list[int], list[str]], None] | None = None,
    token_budget: int | None = None,
) -> list[str]:
    """Raw generations, batched by ``plan_generation_batches`` (``batch_size`` prompts in order of size, or
    token-budget batches), each batch through ``adapter.generate``; results in the order of ``prompts``.

    The adapters handle batches of mixed image counts exactly (tests: batched answers == batch-1 answers).
    Resume: ``done`` maps a batch index to (its prompt positions, their raw outputs) from an earlier run; such a
    batch is not generated again if it holds the same prompts (a batch of another plan, e.g. another token budget,
    is generated again). ``on_batch(index, positions, texts)`` is called after each batch that was generated.
    """
    done = done or {}
    plan = plan_generation_batches(adapter, prompts, max_new_tokens, num_beams, batch_size, token_budget)
    out: list[str | None] = [None] * len(prompts)
    finished = 0
    for index, chunk in enumerate(plan):
        earlier = done.get(index)
        if earlier is not None and list(earlier[0]) == chunk and len(earlier[1]) == len(chunk):
            texts = [str(text) for text in earlier[1]]
        else:
            texts = adapter.generate([prompts[i] for i in chunk], max_new_tokens, num_beams, batch_size)
            if len(texts) != len(chunk):
                raise RuntimeError(f"adapter.generate returned {len(texts)} answers for {len(chunk)} prompts")
            if on_batch is not None:
                on_batch(index, list(chunk), list(texts))
        for i, text in zip(chunk, texts):
            out[i] = text
        finished += len(chunk)
        if progress is not None:
            progress(finished, len(prompts))
    return out  # type: ignore[return-value]
