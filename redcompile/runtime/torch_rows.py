"""One step on one batch row of a PyTorch-held state (eager module or AOTInductor package)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from redcompile.io_contract import StepSignature


def step_row(
    run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    signature: StepSignature,
    state: dict[str, torch.Tensor],
    row: int,
    inputs: dict[str, np.ndarray],
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Run `run` on row `row` as a batch of one: `inputs` as given, the row's slice of each
    cache from `state`; the row's cache slice is overwritten with the step's, and host copies
    of every other output are returned."""
    args = []
    for spec in signature.inputs:
        name = spec.name
        if name in inputs:
            dtype = state[name].dtype
            args.append(torch.from_numpy(np.ascontiguousarray(inputs[name])).to(device, dtype))
        else:
            args.append(state[name][row : row + 1] if spec.batched else state[name])
    host = {}
    with torch.inference_mode():  # the state tensors are inference tensors
        outputs = dict(zip(signature.output_names(), run(args)))
        for name, value in outputs.items():
            fed = signature.feedback.get(name)
            if name.startswith("present.") and fed is not None:
                state[fed][row : row + 1].copy_(value)
            else:
                host[name] = (value.float() if value.is_floating_point() else value).cpu().numpy()
    return host
