"""Plan before you rent: `gpu_memory_gib=G` says whether a config fits, in which phase it peaks, and what would fit."""

from __future__ import annotations

import json

import pytest

from medtune.config import compose
from medtune.files.space import GIB
from medtune.memory.__main__ import main
from medtune.memory.estimate import estimate
from medtune.memory.plan import default_budget_gib
from medtune.memory.verdict import fit_verdict

LLAMA_70B = ["+experiment=paper_llama70b_fsdp"]
GEMMA_4B = ["model=medgemma_4b", "model.init=random", "quantization=nf4", "packing=packed", "packing.max_seq_len=2048"]


def test_70b_on_two_24_gib_cards_does_not_fit_while_loading(capsys: pytest.CaptureFixture[str]) -> None:
    """Every rank builds the whole nf4 model before sharding it: the load peak decides, and no switch lowers it."""
    cfg = compose(LLAMA_70B)
    verdict = fit_verdict(cfg, world_size=2, gpu_memory_gib=24)
    load_gib = estimate(cfg, 2).load_peak_bytes / GIB
    assert verdict.load_peak_gib == pytest.approx(load_gib) and load_gib > 24  # 38.4 GiB per rank
    assert verdict.budget_gib == pytest.approx(default_budget_gib(24, 24))
    assert not verdict.fits and verdict.peak_phase == "load"
    main([*LLAMA_70B, "world_size=2", "gpu_memory_gib=24"])
    out = capsys.readouterr().out
    assert f"does not fit: load peak {load_gib:.2f} GiB" in out and "peaks while loading" in out
    assert "per-layer sharded loading" in out and "fits:" not in out


def test_the_fewest_fsdp_ranks_whose_step_fits() -> None:
    cfg = compose(LLAMA_70B)
    verdict = fit_verdict(cfg, world_size=2, gpu_memory_gib=24)
    assert verdict.train_fix is None and verdict.fsdp_world_size is not None
    assert [name for name, _ in verdict.switches] == ["trainer.offload_activations=true"]  # the rest changes nothing
    n = verdict.fsdp_world_size
    at = fit_verdict(cfg, world_size=n, gpu_memory_gib=24)
    below = fit_verdict(cfg, world_size=n - 1, gpu_memory_gib=24)
    assert at.train_fix is not None and below.train_fix is None


def test_a_card_with_room_fits_and_peaks_in_training(capsys: pytest.CaptureFixture[str]) -> None:
    verdict = fit_verdict(compose(LLAMA_70B), world_size=2, gpu_memory_gib=80)
    assert verdict.fits and verdict.peak_phase == "train" and verdict.train_fix == ""
    assert verdict.train_peak_gib <= verdict.budget_gib
    main([*LLAMA_70B, "world_size=2", "gpu_memory_gib=80", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"]["fits"] is True and data["verdict"]["gpu_memory_gib"] == 80


def test_the_switch_that_makes_the_step_fit() -> None:
    """Every other layer recomputed (as set) does not fit; every layer does: the verdict names that switch."""
    cfg = compose(
        [*GEMMA_4B, "trainer.micro_batch_size=16", "trainer.grad_ckpt_every=2", "trainer.offload_activations=false"]
    )
    every = compose([*GEMMA_4B, "trainer.micro_batch_size=16", "trainer.grad_ckpt_every=1"])
    half_gib, every_gib = (estimate(c).peak_bytes / GIB for c in (cfg, every))
    assert every_gib < half_gib
    card_gib = (every_gib + half_gib) / 2 / 0.9  # a budget between the two peaks
    verdict = fit_verdict(cfg, world_size=1, gpu_memory_gib=card_gib)
    assert every_gib <= verdict.budget_gib < half_gib
    assert not verdict.fits and verdict.train_fix == "trainer.grad_ckpt_every=1 (every layer recomputed)"
    assert verdict.switches[0][1] == pytest.approx(every_gib)
    assert verdict.lines()[-2].startswith("fits with trainer.grad_ckpt_every=1")


@pytest.mark.parametrize("value", ["lots", "0", "-8"])
def test_bad_gpu_memory_is_one_line(value: str) -> None:
    with pytest.raises(SystemExit, match="gpu_memory_gib"):
        main(["model=tiny_llama", f"gpu_memory_gib={value}"])
