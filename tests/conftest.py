# Shared service fixtures (redis-server, the moto S3 server, the pagebatch API and workers) for
# tests/jobs and tests/api; registered once here so each runs once per session.
pytest_plugins = ["tests.service_fixtures"]


# -- a real model: SmolLM2-135M-Instruct, as a GGUF file from PyPI (pagebatch.jobs.commands.smollm2) ---------
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The one explicit way to run the suite without the real model (no route to PyPI, say): its tests then skip.
# Unset, a failure to fetch or load SmolLM2 fails those tests, so a broken fetch or loader cannot pass CI.
SKIP_REAL_MODEL_ENV = "PAGEBATCH_TEST_SKIP_REAL_MODEL"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf under $PAGEBATCH_CACHE_DIR/models, downloaded with pip on first use."""
    if os.environ.get(SKIP_REAL_MODEL_ENV) == "1":
        pytest.skip(f"{SKIP_REAL_MODEL_ENV}=1: real-model tests skipped on request")
    from pagebatch.jobs.commands.smollm2 import fetch_smollm2

    try:
        return fetch_smollm2()
    except Exception as exc:  # noqa: BLE001 - say what failed and how to opt out, whatever it was
        pytest.fail(f"SmolLM2 GGUF could not be fetched ({exc}); set {SKIP_REAL_MODEL_ENV}=1 to skip the "
                    "real-model tests on purpose", pytrace=False)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_path) -> Path:
    """The GGUF converted to a Hugging Face checkpoint directory (cached under $PAGEBATCH_CACHE_DIR/gguf)."""
    from pagebatch.engine.models.gguf import convert_gguf

    return convert_gguf(smollm2_path)


@pytest.fixture
def one_thread():
    """One torch thread for the test: with 2 OpenMP threads on a 2-core machine that other processes share,
    a matmul can run 20x slower than with one (each thread waits on the other at every barrier)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
