"""Stage 6: ICL inference of the selector cells and of the baselines, scored per shot number.

For each shot number k and every evaluated val query, a chooser (``lever_lm.retrievers``) picks k train ICDs in
prompt order; the prompt is the ICDs with their label answers, then the query without one; the LVLM generates
(batched, see ``generate_answers``); VQA answers are post-processed and scored with the official VQA accuracy,
captions with corpus CIDEr. Scores are reported x100, unrounded.

Modules (the package re-exports the public API below; code in this repository imports from the modules)
- ``config``: ``TASKS``, ``METRIC_OF_TASK``, ``InferenceConfig.from_config(config["inference"], task)`` (the section
  validated against the config schema, which holds its defaults and bounds), ``config_digest(...)``.
- ``inputs``: ``InferenceInputs`` (the records and selector-encoder embeddings of train and val, the rule inputs),
  loading and checking the splits, ``select_queries(n_val, max_queries, seed)``, ``val_queries``, ``load_lvlm``.
- ``generation``: ``generate_answers(adapter, prompts, max_new_tokens, num_beams, batch_size, ...,
  token_budget=None)``: batched generation, results in the order given; ``plan_generation_batches(...)`` its
  batches: ``batch_size`` prompts in order of size, or with ``inference.token_budget`` batches of like token length
  within ``rows x (longest prompt + max_new_tokens) x num_beams`` tokens (``adapter.prompt_token_lengths``).
- ``journal``: ``InferenceJournal``, ``journal_path(predictions_path)``: resume after a crash (see its docstring).
- ``evaluation``: ``evaluate(adapter, chooser, queries, train, shots, cfg, task)`` -> (per-shot scores, predictions
  frame).
- ``outputs``: ``write_inference_outputs(...)`` (predictions first, metrics last, both atomic), the output formats.
- ``jobs``: ``run_selector_cell(...)`` / ``run_baseline(...)``: load, check, evaluate, write ``metrics.json`` +
  ``predictions.parquet``. Every bad input (checkpoint of another beam model or version, a val question without
  its answers, a shot larger than the test pool, embeddings of another encoder, a bad ``inference`` setting such as
  a shot of 0: zero-shot is the ZeroShot baseline) stops before the LVLM loads, with one message naming the
  culprit, and leaves no ``metrics.json``.
The imitation ceiling (``lever_lm.ceiling.run_ceiling_cell``) is evaluated with the same ``evaluate``, journal and
output formats, as ``"kind": "ceiling"``.
Heavy imports (torch, transformers, the adapters, the selectors' networks) happen inside the functions.
"""

from lever_lm.inference.config import TASKS, InferenceConfig, config_digest
from lever_lm.inference.evaluation import evaluate
from lever_lm.inference.generation import generate_answers, plan_generation_batches
from lever_lm.inference.inputs import InferenceInputs, select_queries
from lever_lm.inference.jobs import run_baseline, run_selector_cell
from lever_lm.inference.journal import InferenceJournal, journal_path
from lever_lm.inference.outputs import PREDICTION_COLUMNS, write_inference_outputs
from lever_lm.paths import BASELINES

__all__ = [
    "BASELINES",
    "PREDICTION_COLUMNS",
    "TASKS",
    "InferenceConfig",
    "InferenceInputs",
    "InferenceJournal",
    "config_digest",
    "evaluate",
    "generate_answers",
    "journal_path",
    "plan_generation_batches",
    "run_baseline",
    "run_selector_cell",
    "select_queries",
    "write_inference_outputs",
]
