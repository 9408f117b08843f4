"""Fixtures for the CUDA kernel tests: the compiled library, loaded once per session.

GPU tests are marked `cuda` and skip cleanly (one line saying why) where torch sees no GPU or
no CUDA toolkit; the CPU tests beside them always run.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def cuda_ops():
    """torch.ops.redcompile with the CUDA kernels loaded (skips without a GPU)."""
    from redcompile import cuda

    reason = cuda.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cuda.load_library()
    return torch.ops.redcompile


@pytest.fixture
def tree_attention_splits(cuda_ops):
    """Set the forced number of tree-attention column splits; restored afterwards."""
    previous = []

    def set_splits(n: int) -> None:
        previous.append(torch.ops.redcompile_cuda.set_tree_attention_splits(n))

    yield set_splits
    if previous:
        torch.ops.redcompile_cuda.set_tree_attention_splits(previous[0])
