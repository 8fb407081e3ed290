"""InfoScore sanity on a pretrained tiny LVLM: a demonstration in the query's answer convention must score higher
than one in the other convention (../shared/toy-benchmark.md saw 99%; the default models reach 100%, see
benchmarks/bench_toy.py). A short pretraining inside the test keeps it self-contained."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lever_lm.data import build_records  # noqa: E402
from lever_lm.lvlm.tiny import PretrainConfig, QwenTinyDims, load_tiny_dir  # noqa: E402
from lever_lm.toy.data import ToyDatasetConfig, generate_toy_okvqa  # noqa: E402
from lever_lm.toy.evaluate import ToyExampleTable, infoscore_sanity  # noqa: E402
from lever_lm.toy.pretrain import pretrain_tiny_lvlm  # noqa: E402


@pytest.mark.slow
def test_same_convention_demonstration_gets_the_higher_infoscore(tmp_path):
    torch.set_num_threads(1)
    generate_toy_okvqa(tmp_path / "toy", ToyDatasetConfig(seed=2, train_images=120, val_images=30))
    records = {split: build_records("okvqa", tmp_path / "toy", split) for split in ("train", "val")}
    cfg = PretrainConfig(steps=250, batch_size=16, lr=5e-3, warmup_steps=25, log_every=50)
    summary = pretrain_tiny_lvlm("qwen2_5_vl", QwenTinyDims(), cfg, records["train"], str(tmp_path / "model"))
    assert summary["loss_curve"][-1]["loss"] < summary["loss_curve"][0]["loss"]
    adapter = load_tiny_dir("qwen2_5_vl", tmp_path / "model", precision="fp32")
    train = ToyExampleTable.from_records(records["train"])
    val = ToyExampleTable.from_records(records["val"])
    result = infoscore_sanity(adapter, train, val, n=100, seed=0)
    print("infoscore sanity", result)
    assert result["same_convention_wins"] >= 0.9, result
