"""bench/peers.py without the peer installed: redcompile systems measured side by side, the
record's ratios and token identity, kernels per step from ONNX Runtime's profile, the time
split between decoding steps and the rest, the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from redcompile.compiler import ConvertOptions
from redcompile.models.weight_quant import parse_base_weights
from support import PROMPTS

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import peers

    return peers


def test_two_artifacts_side_by_side(peers, tiny_llama, converted):
    ar = converted(tiny_llama, ConvertOptions.of(autoregressive=True))
    int8 = converted(
        tiny_llama,
        ConvertOptions.of(autoregressive=True, base_weights=parse_base_weights("int8", 16)),
    )
    systems = [
        peers.redcompile_system("ar", ar.out, "1", 8),
        peers.redcompile_system("ar-int8", int8.out, "1-nospin", 8),
    ]
    assert systems[0].kernels_per_step < 120  # the lean step, not the tree step's hundreds
    result = peers.measure(systems, PROMPTS[:4], batch=2, rounds=2, progress=lambda _: None)
    assert set(result["systems"]) == {"ar", "ar-int8"}
    assert result["systems"]["ar"]["prompts_identical_to_reference"] == "4/4"
    assert set(result["tokens_per_second_ratio"]) == {"ar/ar-int8", "ar-int8/ar"}
    assert all(len(r["rounds_s"]) == 2 for r in result["systems"].values())
    for row in result["systems"].values():  # the split: steps inside each round's seconds
        assert row["decode_steps"] >= 1 and row["decode_step_us"] > 0
        assert row["decode_step_mean_us"] > 0
        assert 0 < row["outside_steps_s"] < max(row["rounds_s"])
    table = peers.markdown_table([{"threads": "1", **result}])
    assert table.count("\n") == 3 and "| 1 | 2 | ar |" in table


def test_threads_settings_parse(peers):
    assert peers.parse_threads("2") == (2, None)
    assert peers.parse_threads("2-nospin") == (2, False)
    assert peers.parse_threads("0") == (0, None)


def test_tokens_after_a_stop_are_cut_as_redcompile_cuts_them(peers):
    assert peers._until_stop([4, 5, 0, 7], 0, 10) == [4, 5]
    assert peers._until_stop([4, 5, 6], [9], 2) == [4, 5]


def test_a_system_in_its_own_process_decodes_as_it_does_here(peers, tiny_llama, converted):
    ar = converted(tiny_llama, ConvertOptions.of(autoregressive=True))
    here = peers.redcompile_system("here", ar.out, "1", 8)
    there = peers.isolated_system("redcompile", "there", ar.out, "1", 8)
    try:
        assert there.kind == "redcompile" and there.kernels_per_step == here.kernels_per_step
        result = peers.measure([here, there], PROMPTS[:3], batch=2, rounds=1, progress=print)
        assert result["identical_prompts"] == {"here=there": "3/3"}
        decoded = there.run([[5, 6, 7, 8]], 1)
        assert decoded.seconds > 0 and decoded.outputs == here.run([[5, 6, 7, 8]], 1).outputs
    finally:
        there.close()
