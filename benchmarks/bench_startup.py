"""Start-up cost per pipeline job: the seconds a fresh job process spends importing what the job imports (issue 18).

Every job of the pipeline is a fresh Python process running a thin workflow script (Snakemake's ``script:``), so
every job pays its imports again. For each job kind this measures, in a fresh interpreter, the wall time of:

1. Snakemake's script preamble (unpickling the ``snakemake`` object imports ``snakemake.iocontainers`` & co.);
2. every import statement of the job's workflow script (read from ``workflow_scripts/<script>.py`` itself, so a
   change there is measured; conditional imports count, as they run in the default config);
3. what the job's lever_lm entry point imports lazily on its way, on the default config (``RUN_PATH`` below:
   the function-level imports of lever_lm as written there, plus the model modules that transformers and
   open_clip load when a model is built, traced with ``-X importtime`` and ``sys.modules`` on tiny inputs).

Module-level imports are what the code under test decides (a lever_lm module that imports pandas at the top costs
every job that imports the module); the function-level ones in (3) are listed here and must follow the code when
a job's run path changes. Each measurement runs ``-X importtime``, repeated ``--repeats`` times (median); the
breakdown names the heaviest top-level packages by import self time (torch, transformers, pytorch_lightning, ...;
modules loaded through ``importlib.import_module`` are missing from ``-X importtime``, so the parts sum to a bit
less than the total). Nothing is written.

Usage:
    .venv/bin/python benchmarks/bench_startup.py [--repeats 3] [--jobs REGEX] [--top 5]
    .venv/bin/python benchmarks/bench_startup.py --against /tmp/base     # alternate with another checkout
    BENCH=bench_startup.py bash benchmarks/compare_commits.sh BASE_REV -- --repeats 3

``--against DIR`` measures a checkout of another commit (``git worktree add /tmp/base BASE_REV``) in the same
run, alternating the two per repeat, and prints both columns and the difference; ``--root DIR`` measures another
checkout alone. The jobs import lever_lm from the measured tree (``PYTHONPATH``), with this tree's ``.venv``.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# 1. Snakemake's preamble: ``pickle.loads`` of the job's Snakemake object, then these two imports.
PREAMBLE = (
    "import pickle",
    "import snakemake.iocontainers",
    "import snakemake.resources",
    "from snakemake.logging import logger",
    "from snakemake.iocontainers import Snakemake",
)

# 3. Run-path pieces (lazy imports of lever_lm functions, and what the libraries load at run time).
PIN = ("import torch", "import torch._inductor.config")  # lever_lm.determinism.pin: use_deterministic_algorithms
READ_PARQUET = ("import pyarrow.parquet", "import pyarrow.dataset", "import pandas.core.arrays.arrow.extension_types")
WRITE_PARQUET = ("import pyarrow.parquet", "import pyarrow.pandas_compat")
IMAGES = ("from PIL import Image", "import PIL.JpegImagePlugin")
QWEN = (  # lever_lm.lvlm.qwen.load_qwen_adapter and its scorer
    "import lever_lm.lvlm.qwen",
    "from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration",
    "import transformers.models.auto.processing_auto",
    "import transformers.models.auto.video_processing_auto",
    "import transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
    "import transformers.models.qwen2_vl.image_processing_qwen2_vl",
    "import transformers.models.qwen2_vl.image_processing_qwen2_vl_fast",
    "import transformers.models.qwen2_vl.video_processing_qwen2_vl",
    "import transformers.models.qwen2.tokenization_qwen2_fast",
    "from transformers.utils.chat_template_utils import _compile_jinja_template",
    "import lever_lm.lvlm.qwen_fast",
    "import transformers.models.qwen2_5_omni",
)
FLAMINGO = (  # lever_lm.lvlm.flamingo.load_flamingo_adapter and its scorer
    "import lever_lm.lvlm.flamingo",
    "import open_clip",
    "from open_flamingo import create_model_and_transforms",
    "from transformers import AutoTokenizer",
    "import transformers.models.auto.modeling_auto",
    "import transformers.models.mpt.modeling_mpt",
    "import lever_lm.lvlm.flamingo_fast",
    "import einops._torch_specific",
    "import torch.utils.serialization",
)
FAMILY = {"qwen": QWEN, "flamingo": FLAMINGO}
TINY_QWEN = (  # lever_lm.lvlm.tiny.new_tiny_qwen, then pretraining through the Qwen adapter
    "from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, "
    "Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor",
    "from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor",
)
TINY_FLAMINGO = (
    "from transformers import MptConfig, MptForCausalLM",
    "from transformers import PreTrainedTokenizerFast",
    "import lever_lm.lvlm.qwen",
)
INFERENCE = (  # lever_lm.inference: run_selector_cell / run_baseline, up to the scores and outputs
    "import lever_lm.beam_search",
    "import lever_lm.retrievers",
    "import lever_lm.data",
    "import lever_lm.embeddings",
    "import lever_lm.lvlm.factory",
    "import lever_lm.metrics",
)


def _selector(version: str) -> tuple[str, ...]:  # lever_lm.selectors.checkpoint.build_model
    return (
        "import torch",
        "import lever_lm.selectors.checkpoint",
        "import torch.utils.serialization",
        "import lever_lm.selectors.similarity",
        f"import lever_lm.selectors.{version}",
    )


def _train(version: str) -> tuple[str, ...]:  # lever_lm.selectors.training.train
    return (
        "import lever_lm.selectors.training",
        "import lever_lm.determinism",
        *PIN,
        "import lever_lm.embeddings",
        "import lever_lm.beam_shards",
        "import lever_lm.sampling",
        *_selector(version),
    )


@dataclass(frozen=True)
class Job:
    name: str
    script: str  # workflow_scripts/<script>.py
    run: tuple[str, ...] = ()


JOBS = (
    Job("toy_dataset", "toy_dataset", (*IMAGES, "from PIL import ImageDraw")),
    Job("records", "records", (*IMAGES, *WRITE_PARQUET)),
    Job("embeddings", "embeddings", (*READ_PARQUET, "import torch", "import open_clip", *IMAGES)),
    Job("faiss_index", "faiss_index", ("import faiss",)),
    Job("anchors", "anchors", READ_PARQUET),
    Job(
        "candidates, test_pool",
        "sample_candidates",
        ("import lever_lm.data", "import lever_lm.embeddings", *READ_PARQUET, "import lever_lm.index", "import faiss"),
    ),
    Job(
        "tiny_lvlm qwen",
        "tiny_lvlm",
        (
            "import lever_lm.lvlm.tiny",
            *READ_PARQUET,
            "import torch",
            "import lever_lm.toy.data",
            *TINY_QWEN,
            "import lever_lm.lvlm.tiny_tokenizer",
            *QWEN,
            *IMAGES,
        ),
    ),
    Job(
        "tiny_lvlm flamingo",
        "tiny_lvlm",
        (
            "import lever_lm.lvlm.tiny",
            *READ_PARQUET,
            "import torch",
            "import lever_lm.toy.data",
            *FLAMINGO,
            *TINY_FLAMINGO,
            "import lever_lm.lvlm.tiny_tokenizer",
            *IMAGES,
        ),
    ),
    *(
        Job(f"beam_shard {family}", "beam_shard", (*PIN, *READ_PARQUET, *FAMILY[family], *IMAGES))
        for family in ("qwen", "flamingo")
    ),
    Job("beam_gather", "beam_gather"),
    *(
        Job(
            f"ceiling_shard {family}",
            "ceiling_shard",
            (
                *PIN,
                "import lever_lm.beam_search",
                "import lever_lm.beam_shards",
                "import lever_lm.data",
                "import lever_lm.sampling",
                "import lever_lm.inference",
                "import lever_lm.lvlm.factory",
                *READ_PARQUET,
                *FAMILY[family],
                *IMAGES,
            ),
        )
        for family in ("qwen", "flamingo")
    ),
    Job("ceiling_gather", "ceiling_gather", ("import lever_lm.beam_shards", "import lever_lm.data", *READ_PARQUET)),
    *(
        Job(
            f"ceiling_inference {family}",
            "ceiling_inference",
            (
                *PIN,
                *INFERENCE,
                "import lever_lm.selectors.data",
                *READ_PARQUET,
                *FAMILY[family],
                *IMAGES,
                *WRITE_PARQUET,
            ),
        )
        for family in ("qwen", "flamingo")
    ),
    *(
        Job(f"train_selector {version}", "train_selector", _train(version))
        for version in ("v0", "v1", "v2", "v3", "v4")
    ),
    *(
        Job(
            f"icl_inference {family} {version}",
            "icl_inference",
            (
                *PIN,
                *INFERENCE,
                *READ_PARQUET,
                *_selector(version),
                "import lever_lm.sampling",
                *FAMILY[family],
                *IMAGES,
                *WRITE_PARQUET,
            ),
        )
        for family, version in (("qwen", "v0"), ("qwen", "v4"), ("flamingo", "v0"), ("flamingo", "v4"))
    ),
    *(
        Job(
            f"baseline_inference {family}",
            "baseline_inference",
            (
                *PIN,
                *INFERENCE,
                *READ_PARQUET,
                "import lever_lm.index",
                "import faiss",
                *FAMILY[family],
                *IMAGES,
                *WRITE_PARQUET,
            ),
        )
        for family in ("qwen", "flamingo")
    ),
    Job(
        "report",
        "report",
        (
            *READ_PARQUET,
            "from scipy import stats",
            "import matplotlib",
            "from matplotlib.backends.backend_agg import FigureCanvasAgg",
            "from matplotlib.figure import Figure",
        ),
    ),
)
HEAVY = (
    "torch",
    "transformers",
    "pytorch_lightning",
    "lightning_fabric",
    "torchmetrics",
    "open_clip",
    "open_flamingo",
    "torchvision",
    "timm",
    "matplotlib",
    "scipy",
    "pandas",
    "pyarrow",
    "faiss",
)


def script_imports(root: Path, script: str) -> list[str]:
    """Every import statement of ``workflow_scripts/<script>.py``, in source order, as source text."""
    path = root / "workflow_scripts" / f"{script}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    nodes = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return [ast.unparse(node) for node in sorted(nodes, key=lambda node: (node.lineno, node.col_offset))]


def job_code(root: Path, job: Job) -> str:
    """A program that runs the job's imports, timed, and prints {"seconds", "modules", "failed"} as JSON."""
    statements = [*PREAMBLE, *script_imports(root, job.script), *job.run]
    lines = ["import sys, time", "_failed = []", "_t0 = time.perf_counter()"]
    for statement in statements:
        lines += [
            "try:",
            f"    {statement}",
            "except ImportError as _err:",
            f"    _failed.append({statement!r} + ': ' + str(_err))",
        ]
    lines += [
        "_seconds = time.perf_counter() - _t0",
        "_heavy = sorted({name.split('.')[0] for name in sys.modules} & set(" + repr(HEAVY) + "))",
        "import json",
        "print(json.dumps({'seconds': _seconds, 'modules': len(sys.modules), 'heavy': _heavy, 'failed': _failed}))",
    ]
    return "\n".join(lines) + "\n"


def parse_importtime(stderr: str) -> dict[str, float]:
    """Self seconds per top-level package from ``-X importtime`` output."""
    per_package: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:") :].split("|", 2)
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + int(self_us) / 1e6
    return per_package


def measure(root: Path, job: Job, python: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [python, "-X", "importtime", "-c", job_code(root, job)], cwd=root, env=env, capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(f"{job.name} ({root}): exit {run.returncode}\n{run.stderr[-2000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["packages"] = parse_importtime(run.stderr)
    return result


def summary(results: list[dict], top: int) -> tuple[float, str, dict]:
    seconds = [r["seconds"] for r in results]
    median = statistics.median(seconds)
    middle = min(results, key=lambda r: abs(r["seconds"] - median))
    ranked = sorted(middle["packages"].items(), key=lambda item: -item[1])
    heaviest = ", ".join(f"{name} {value:.2f}" for name, value in ranked[:top] if value >= 0.005)
    return median, heaviest, middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default="", help="regex: only the job kinds whose name matches")
    parser.add_argument("--top", type=int, default=5, help="heaviest top-level packages to name")
    parser.add_argument("--root", type=Path, default=HERE, help="the checkout to measure (default: this one)")
    parser.add_argument("--against", type=Path, help="also measure this checkout, alternating, and compare")
    parser.add_argument("--list", action="store_true", help="print each job's import statements and exit")
    args = parser.parse_args()
    python = str(HERE / ".venv" / "bin" / "python") if (HERE / ".venv").is_dir() else sys.executable
    jobs = [job for job in JOBS if re.search(args.jobs, job.name)]
    roots = [args.root.resolve()] + ([args.against.resolve()] if args.against else [])
    if args.list:
        for job in jobs:
            print(f"## {job.name} (workflow_scripts/{job.script}.py)")
            print("\n".join([*PREAMBLE, *script_imports(args.root, job.script), *job.run]) + "\n")
        return
    for root in roots:
        head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
        print(f"# {root}: {head.stdout.strip()[:100]}")
    print(f"# import seconds per job process, median of {args.repeats} (python -X importtime, {python})")
    if args.against:
        print(
            f"{'job':<28} {'against s':>9} {'this s':>7} {'diff':>6}  "
            "heavy packages loaded (this tree); heaviest (self s)"
        )
    else:
        print(f"{'job':<28} {'import s':>8} {'modules':>7}  heavy packages loaded; heaviest (self s)")
    total = {root: 0.0 for root in roots}
    for job in jobs:
        results: dict[Path, list[dict]] = {root: [] for root in roots}
        for _ in range(args.repeats):
            for root in reversed(roots):  # the other checkout first, then this one, alternating
                results[root].append(measure(root, job, python))
        main_root = roots[0]
        median, heaviest, middle = summary(results[main_root], args.top)
        total[main_root] += median
        heavy = " ".join(middle["heavy"]) or "-"
        failures = {f"{root.name}: {failure}" for root in roots for r in results[root] for failure in r["failed"]}
        failed = f"  FAILED IMPORTS: {sorted(failures)}" if failures else ""
        if args.against:
            other = summary(results[roots[1]], args.top)[0]
            total[roots[1]] += other
            print(
                f"{job.name:<28} {other:>9.2f} {median:>7.2f} {median - other:>+6.2f}  [{heavy}] {heaviest}{failed}",
                flush=True,
            )
        else:
            print(f"{job.name:<28} {median:>8.2f} {middle['modules']:>7}  [{heavy}] {heaviest}{failed}", flush=True)
    if args.against:
        print(
            f"{'sum over job kinds':<28} {total[roots[1]]:>9.2f} {total[roots[0]]:>7.2f} "
            f"{total[roots[0]] - total[roots[1]]:>+6.2f}"
        )
    else:
        print(f"{'sum over job kinds':<28} {total[roots[0]]:>8.2f}")


if __name__ == "__main__":
    main()
