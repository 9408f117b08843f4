"""Session fixtures: tiny model folders built once per test session."""

from __future__ import annotations

import pytest
import torch

from support import BENCHMARK_FIXTURE, save_tiny_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """One folder per architecture; llama also in a tied-embedding variant."""
    root = tmp_path_factory.mktemp("tiny")
    folders = {
        arch: save_tiny_model(root / arch, arch) for arch in ("llama", "mistral", "qwen2", "qwen3")
    }
    folders["llama_tied"] = save_tiny_model(root / "llama_tied", "llama", tie=True, seed=1)
    return folders


@pytest.fixture(scope="session")
def tiny_llama(tiny_models):
    """The tiny llama folder."""
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """convert(model_dir, options) once per distinct request for the whole session: a test
    that only reads an artifact shares it (tiny converts cost 10-15 s each on two cores)."""
    from redcompile.compiler import ConvertOptions, convert

    root = tmp_path_factory.mktemp("converted")
    made = {}

    def get(model_dir, options=None, suffix=".onnx"):
        options = options or ConvertOptions.of()
        key = (str(model_dir), repr(options), suffix)
        if key not in made:
            made[key] = convert(model_dir, root / f"artifact{len(made)}{suffix}", options=options)
        return made[key]

    return get


@pytest.fixture(scope="session")
def pycode_lm():
    """The trained benchmark fixture (../shared/fixtures/pycode-lm); skips where it is absent."""
    if not BENCHMARK_FIXTURE.is_dir():
        pytest.skip(f"benchmark fixture not at {BENCHMARK_FIXTURE}")
    return BENCHMARK_FIXTURE
