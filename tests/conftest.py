import os

# A stray hub download must fail fast instead of hanging on the closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def reduced_reference_run(tmp_path_factory):
    """One clean `snakemake` run of ``tests.pipeline_runs.reduced_config()`` (both tiny LVLMs), shared by the
    determinism test (which makes a second clean run) and the kill/resume test (which compares with it)."""
    from tests.pipeline_runs import clean_run, reduced_config

    return clean_run(tmp_path_factory.mktemp("reference_run"), reduced_config())
