"""The memory plan: the fewest recomputed layers that fit a budget, offloading only when nothing else fits."""

from __future__ import annotations

import dataclasses
import re

import pytest

from medtune.config import ConfigError, compose
from medtune.files.space import GIB
from medtune.memory.estimate import estimate
from medtune.memory.plan import default_budget_gib, plan_memory

GEMMA_4B = ["model=medgemma_4b", "model.init=random", "quantization=nf4", "packing=packed", "packing.max_seq_len=2048"]
LAYERS = 34  # Gemma 3 4B


def _peak(cfg, **trainer) -> float:
    return estimate(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, **trainer))).peak_bytes / GIB


def test_without_a_budget_every_layer_is_checkpointed_as_before() -> None:
    cfg, record = plan_memory(compose(GEMMA_4B), budget_gib=None)
    assert cfg.trainer.checkpointed_layers(LAYERS) == list(range(LAYERS))
    assert cfg.trainer.offload_activations is False
    assert "no memory budget" in record["plan/reason"]


@pytest.mark.parametrize("budget", [9.0, 20.0, 35.0, 50.0, 70.0])
def test_the_fewest_checkpointed_layers_that_fit(budget: float) -> None:
    cfg = compose([*GEMMA_4B, "trainer.micro_batch_size=8"])
    planned, record = plan_memory(cfg, budget_gib=budget)
    n = record["plan/checkpointed_layers"]
    assert len(planned.trainer.checkpointed_layers(LAYERS)) == n
    assert record["plan/predicted_peak_gib"] == pytest.approx(_peak(cfg, grad_ckpt_layers=n))
    assert record["plan/predicted_peak_gib"] <= budget
    if n > 0:  # one layer fewer would not fit: the plan recomputes no more than it must
        assert _peak(cfg, grad_ckpt_layers=n - 1) > budget
    assert record["plan/offload_activations"] is False


def test_a_budget_the_whole_step_fits_recomputes_nothing() -> None:
    cfg, record = plan_memory(compose([*GEMMA_4B, "trainer.micro_batch_size=4"]), budget_gib=200.0)
    assert cfg.trainer.checkpointed_layers(LAYERS) == [] and record["plan/checkpointed_layers"] == 0
    assert "nothing recomputed" in record["plan/reason"]


def test_fewer_layers_recomputed_as_the_budget_grows() -> None:
    cfg = compose([*GEMMA_4B, "trainer.micro_batch_size=8"])
    counts = [plan_memory(cfg, budget_gib=b)[1]["plan/checkpointed_layers"] for b in (8, 15, 25, 40, 60, 100)]
    assert counts == sorted(counts, reverse=True) and counts[0] == LAYERS and counts[-1] == 0


def test_offload_only_when_every_layer_does_not_fit() -> None:
    cfg = compose([*GEMMA_4B, "trainer.micro_batch_size=8"])
    full = _peak(cfg, grad_ckpt_every=1)
    planned, record = plan_memory(cfg, budget_gib=full - 0.5)
    assert record["plan/offload_activations"] is True and planned.trainer.offload_activations is True
    assert record["plan/checkpointed_layers"] == LAYERS
    assert record["plan/predicted_peak_gib"] <= full - 0.5
    assert "offloaded" in record["plan/reason"]
    # asked not to offload: the plan says it is over the budget instead of pretending
    _, over = plan_memory(compose([*GEMMA_4B, "trainer.micro_batch_size=8", "trainer.offload_activations=false"]),
                          budget_gib=full - 0.5)  # fmt: skip
    assert over["plan/offload_activations"] is False and "over the budget" in over["plan/reason"]


def test_settings_by_hand_are_kept() -> None:
    cfg, record = plan_memory(compose([*GEMMA_4B, "trainer.grad_ckpt_every=2"]), budget_gib=70.0)
    assert cfg.trainer.checkpointed_layers(LAYERS) == list(range(0, LAYERS, 2))
    assert record["plan/checkpointed_layers"] == 17 and "as set" in record["plan/reason"]
    cfg, _ = plan_memory(compose([*GEMMA_4B, "trainer.grad_ckpt_layers=5"]), budget_gib=70.0)
    assert len(cfg.trainer.checkpointed_layers(LAYERS)) == 5


def test_rows_first_with_every_layer_then_the_recomputation_for_those_rows() -> None:
    cfg = compose([*GEMMA_4B, "trainer.micro_batch_size=auto"])
    planned, record = plan_memory(cfg, budget_gib=20.0)
    rows = planned.trainer.micro_batch_size
    assert rows == record["trainer/micro_batch_size_auto"] and rows > 8  # as many rows as fit when recomputing all
    assert record["plan/predicted_peak_gib"] <= 20.0
    n = record["plan/checkpointed_layers"]  # the most rows leave little room to recompute fewer
    assert n >= LAYERS - 3 and _peak(planned, grad_ckpt_layers=n - 1) > 20.0


@pytest.mark.parametrize(("n", "want"), [(0, []), (1, [0]), (3, [0, 11, 22]), (33, None), (34, list(range(34)))])
def test_checkpointed_layers_spread_evenly_and_never_the_last_unless_all(n: int, want: list[int] | None) -> None:
    got = compose([f"trainer.grad_ckpt_layers={n}"]).trainer.checkpointed_layers(LAYERS)
    assert len(got) == n == len(set(got)) and all(0 <= i < LAYERS for i in got)
    assert (LAYERS - 1 in got) == (n == LAYERS)
    if want is not None:
        assert got == want


def test_every_kth_layer_and_bad_values() -> None:
    assert compose(["trainer.grad_ckpt_every=3"]).trainer.checkpointed_layers(7) == [0, 3, 6]
    assert compose(["trainer.grad_ckpt_every=0"]).trainer.checkpointed_layers(7) == []
    for bad, match in [
        ("trainer.grad_ckpt_every=-1", r"trainer\.grad_ckpt_every=-1 must be auto or a whole number"),
        ("trainer.grad_ckpt_every=sometimes", r"grad_ckpt_every='sometimes' must be auto"),
        ("trainer.grad_ckpt_layers=-2", r"trainer\.grad_ckpt_layers=-2 must be null or a whole number"),
        ("trainer.offload_activations=maybe", r"offload_activations='maybe' must be auto, true or false"),
        ("trainer.memory_budget_gib=0", r"memory_budget_gib=0(\.0)? must be a positive number of GiB"),
        ("trainer.memory_budget_gib=-3", r"memory_budget_gib=-3(\.0)? must be a positive number of GiB"),
    ]:
        with pytest.raises(ConfigError, match=match):
            compose([bad])


def test_default_budget_leaves_a_margin() -> None:
    assert default_budget_gib(78.0, 79.2) == pytest.approx(78.0 - 7.92)  # 10% of an 80 GB card
    assert default_budget_gib(10.0, 12.0) == pytest.approx(8.0)  # at least 2 GiB
    assert default_budget_gib(1.0, 80.0) == 0.0


@pytest.mark.parametrize("rows", ["2", "auto"])
def test_a_budget_no_plan_fits_is_one_line_exit_2(rows: str, capsys: pytest.CaptureFixture[str]) -> None:
    """python -m medtune.memory with a budget even the smallest plan exceeds: one line naming the predicted peak and
    the settings that would lower it, exit 2 (bad input), no traceback and no breakdown that pretends it fits."""
    from medtune.memory.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([f"trainer.micro_batch_size={rows}", "trainer.offload_activations=false", "trainer.memory_budget_gib=0.5"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if rows == "2":  # the smallest plan: every layer recomputed, and still over
        assert re.search(r"18 of 18 layers recomputed: predicted peak \d+\.\d\d GiB, budget 0\.50 GiB", err)
        for switch in ("trainer.offload_activations=true", "packing.max_seq_len", "quantization=nf4", "sharding=fsdp"):
            assert switch in err
    else:  # no micro-batch fits: the load peak alone is over
        assert "no micro-batch size changes that" in err
