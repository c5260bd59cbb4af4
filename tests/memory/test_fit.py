"""trainer.micro_batch_size=auto picks the largest micro-batch the estimator fits in trainer.memory_budget_gib."""

from __future__ import annotations

import pytest

from medtune.config import ConfigError, compose
from medtune.files.space import GIB
from medtune.memory.estimate import estimate
from medtune.memory.fit import fit_micro_batch, with_micro_batch

GEMMA_4B = [
    "model=medgemma_4b",
    "model.init=random",
    "quantization=nf4",
    "packing=packed",
    "trainer.micro_batch_size=auto",
]


@pytest.mark.parametrize("budget", [6.0, 10.0, 20.0, 40.0])
def test_the_largest_size_that_fits_and_no_larger(budget: float) -> None:
    cfg = compose([*GEMMA_4B, f"trainer.memory_budget_gib={budget}"])
    fitted_cfg, fit = fit_micro_batch(cfg)
    rows = fit["trainer/micro_batch_size_auto"]
    assert fitted_cfg.trainer.micro_batch_size == rows >= 1
    brute = max(n for n in range(1, 129) if estimate(with_micro_batch(cfg, n)).peak_bytes / GIB <= budget)
    assert rows == brute
    assert fit["trainer/predicted_peak_gib"] <= budget < fit["trainer/predicted_peak_gib_next"]


def test_budgets_that_nothing_fits_say_why() -> None:
    with pytest.raises(ConfigError, match=r"even one row of 2048 tokens is predicted to need .* GiB"):
        fit_micro_batch(compose([*GEMMA_4B, "trainer.memory_budget_gib=3.5"]))
    with pytest.raises(ConfigError, match=r"loading the model is predicted to peak at 2\.97 GiB"):
        fit_micro_batch(compose([*GEMMA_4B, "trainer.memory_budget_gib=2"]))


def test_auto_needs_a_budget_and_sizes_must_be_whole() -> None:
    with pytest.raises(ConfigError, match=r"needs trainer\.memory_budget_gib"):
        compose(["trainer.micro_batch_size=auto"])
    with pytest.raises(ConfigError, match=r"must be a whole number of rows or 'auto'"):
        compose(["trainer.micro_batch_size=often"])
    with pytest.raises(ConfigError, match=r"trainer\.micro_batch_size=0 must be > 0"):
        compose(["trainer.micro_batch_size=0"])
