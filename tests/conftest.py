"""Session fixtures: tiny model folders built once per test session."""

from __future__ import annotations

import pytest
import torch

from support import save_tiny_model

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
