"""Every pipeline job is a fresh process, so every job pays what it imports (issue 18): a job kind must not import
heavy packages it does not use. Each case imports, in a fresh interpreter, the modules a job's workflow script
imports (read from the script itself) plus the lever_lm modules its entry point reaches, and checks which heavy
packages are absent from ``sys.modules`` afterwards. ``benchmarks/bench_startup.py`` measures what the imports cost.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the deep-learning stack: torch alone is seconds per job, Lightning (through torchmetrics) several more
DL = (
    "torch",
    "transformers",
    "pytorch_lightning",
    "lightning_fabric",
    "torchmetrics",
    "open_clip",
    "open_flamingo",
    "torchvision",
    "timm",
)
REPORTING = ("matplotlib", "scipy")


def script_imports(script: str) -> list[str]:
    """Every import statement of ``workflow_scripts/<script>.py`` (conditional ones too), in source order."""
    tree = ast.parse((REPO / "workflow_scripts" / f"{script}.py").read_text(encoding="utf-8"))
    nodes = sorted((n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))), key=lambda n: n.lineno)
    return [ast.unparse(node) for node in nodes]


def loaded_after(statements: list[str]) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``statements`` in a fresh interpreter."""
    code = "\n".join(
        [*statements, "import json, sys", "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))"]
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


# job kind -> (workflow scripts, lever_lm modules its entry point imports on the way, packages it must not load)
LIGHT_JOBS = {
    "toy_dataset": (["toy_dataset"], [], DL + REPORTING + ("pandas", "faiss")),
    "records": (["records"], [], DL + REPORTING + ("faiss",)),
    "anchors": (["anchors"], [], DL + REPORTING + ("faiss",)),
    # stored embeddings only: no pandas either (lever_lm.embeddings imports it where records are embedded)
    "faiss_index": (["faiss_index"], [], DL + REPORTING + ("pandas",)),
    "candidates, test_pool": (
        ["sample_candidates"],
        ["lever_lm.data", "lever_lm.embeddings", "lever_lm.index"],
        DL + REPORTING,
    ),
    "beam_gather": (["beam_gather"], [], DL + REPORTING + ("pandas", "faiss")),
    "ceiling_gather": (["ceiling_gather"], ["lever_lm.beam_shards", "lever_lm.data"], DL + REPORTING + ("faiss",)),
    # matplotlib and scipy are the report's own, imported where a plot or an interval is made
    "report": (["report"], ["lever_lm.report.plots", "lever_lm.report.predictions"], DL + ("faiss",)),
    # the modules of selector training (torch and Lightning come when train() runs, see below): no pandas
    "train_selector (modules)": (
        ["train_selector"],
        [
            "lever_lm.selectors.training",
            "lever_lm.selectors.checkpoint",
            "lever_lm.selectors.evaluation",
            "lever_lm.selectors.data",
            "lever_lm.embeddings",
            "lever_lm.beam_shards",
            "lever_lm.sampling",
            "lever_lm.determinism",
        ],
        DL + REPORTING + ("pandas", "faiss"),
    ),
    # the modules of rule tiny_lvlm (the tiny builders, also imported at plan time to check the config, and the toy's
    # pretraining): the model stack comes when a model is built
    "tiny_lvlm (modules)": (
        ["tiny_lvlm"],
        ["lever_lm.lvlm.tiny", "lever_lm.lvlm.tiny_tokenizer", "lever_lm.tiny_clip", "lever_lm.toy.data"],
        DL + REPORTING + ("faiss",),
    ),
    # the modules of the LVLM jobs: the model stack is imported when a model is loaded, never at import
    "inference, beam search (modules)": (
        ["icl_inference", "baseline_inference", "ceiling_inference", "ceiling_shard", "beam_shard"],
        [
            "lever_lm.inference",
            "lever_lm.retrievers",
            "lever_lm.selectors.checkpoint",
            "lever_lm.lvlm.factory",
            "lever_lm.lvlm.qwen",
            "lever_lm.lvlm.flamingo",
            "lever_lm.lvlm.qwen_fast",
            "lever_lm.lvlm.flamingo_fast",
            "lever_lm.metrics",
            "lever_lm.beam_search",
            "lever_lm.ceiling",
        ],
        DL + REPORTING,
    ),
}


@pytest.mark.parametrize("job", list(LIGHT_JOBS))
def test_job_imports_no_heavy_package_it_does_not_use(job):
    scripts, modules, forbidden = LIGHT_JOBS[job]
    statements = [line for script in scripts for line in script_imports(script)]
    statements += [f"import {module}" for module in modules]
    loaded = loaded_after(statements)
    assert "lever_lm" in loaded  # the statements ran
    assert not loaded & set(forbidden), f"{job} imports {sorted(loaded & set(forbidden))}"


def test_the_check_sees_a_heavy_import():
    """The probe itself: a module that does import a heavy package at import time is caught."""
    assert {"torch", "transformers"} <= loaded_after(["import lever_lm.selectors.v0"])


SELECTOR_NETWORKS = """
import json, sys
from pathlib import Path
import yaml
from lever_lm.selectors import FeatureTable, SelectorConfig, load_selector, select
from lever_lm.selectors import checkpoint as ckpt
from lever_lm.selectors.features import parse_feature_choice
from lever_lm.selectors.training import LRSchedule  # the training module itself
import numpy as np

out = Path(sys.argv[1])
cfg = SelectorConfig.from_config(yaml.safe_load(open("config.yaml"))["selector"])
lever = "query_img_text_icd_img_text"
choice, dims, n_train = parse_feature_choice(lever), {"image": 8, "text": 8}, 20
rng = np.random.default_rng(0)
train = FeatureTable(*(rng.standard_normal((n_train, 8)).astype("float32") for _ in range(2)))
seen = {}
for version in ("v1", "v2", "v3", "v4", "v0"):
    model = ckpt.build_model(version, cfg.model_params(version), n_train, choice, dims, 4)
    meta = {"format": ckpt.FORMAT, "format_version": ckpt.FORMAT_VERSION, "dataset": "d", "beam_model": "m",
            "sampler": "s", "ex_name": "e", "version": version, "lever_lm": lever, "construct_order": "left",
            "n_train": n_train, "feature_dims": dims, "model": cfg.model_params(version), "max_k": 4,
            "beams_params": {}}
    ckpt.save_checkpoint(out / f"{version}.ckpt", model.state_dict(), meta)
    selector = load_selector(out / f"{version}.ckpt", train)
    select(selector, FeatureTable(train.image[:2], train.text[:2]), 2, pools=[list(range(10))] * 2)
    seen[version] = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps(seen))
"""


def test_selectors_v1_to_v4_need_neither_transformers_nor_lightning(tmp_path):
    """Building, saving, loading and decoding with v1-v4 (what inference does, and training's networks) imports
    neither transformers (only v0's GPT-2 needs it) nor Lightning; v0 does import transformers, which shows the
    check works."""
    run = subprocess.run(
        [sys.executable, "-c", SELECTOR_NETWORKS, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = {version: set(packages) for version, packages in json.loads(run.stdout.strip().splitlines()[-1]).items()}
    for version in ("v1", "v2", "v3", "v4"):
        assert "torch" in seen[version]
        unexpected = seen[version] & {
            "transformers",
            "pytorch_lightning",
            "lightning_fabric",
            "torchmetrics",
            "open_clip",
            "pandas",
            "matplotlib",
            "scipy",
        }
        assert not unexpected, f"{version} selector imports {sorted(unexpected)}"
    assert "transformers" in seen["v0"]
    assert "pytorch_lightning" not in seen["v0"]


SELECTOR_TRAINING = """
import json, sys
from pathlib import Path
from lever_lm.selectors import SelectorConfig
from lever_lm.selectors.synthetic import make_task
from lever_lm.selectors.training import train

root = Path(sys.argv[1])
task = make_task(root / "inputs", n_train=40, dim=8, n_anchors=12, pool_size=10, beam_size=3, n_heldout=4)
cfg = SelectorConfig.from_config({"epochs": 2, "batch_size": 8, "rl": {"rce_epochs": 1, "grpo_epochs": 1}})
train(cfg, task.identity("v3"), task.paths(root / "v3"))
train(cfg, task.identity("v4"), task.paths(root / "v4", root / "v3" / "best.ckpt"))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_selector_training_imports_no_lightning_nor_transformers(tmp_path):
    """Training v3 and v4 (v4 from v3's checkpoint) imports torch and no Lightning, torchmetrics or transformers:
    importing Lightning cost ~3.5 s of an ~8 s train_selector job (through torchmetrics: torchvision's models and
    transformers)."""
    run = subprocess.run(
        [sys.executable, "-c", SELECTOR_TRAINING, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = set(json.loads(run.stdout.strip().splitlines()[-1]))
    assert "torch" in loaded and (tmp_path / "v4" / "metrics.json").is_file()
    unexpected = loaded & {"pytorch_lightning", "lightning_fabric", "torchmetrics", "transformers", "torchvision"}
    assert not unexpected, f"selector training imports {sorted(unexpected)}"
