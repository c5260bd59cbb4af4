"""trainer.micro_batch_size=auto picks the largest micro-batch the estimator fits in trainer.memory_budget_gib."""

from __future__ import annotations

import pytest

from medtune.config import ConfigError, compose
from medtune.files.space import GIB
from medtune.memory.estimate import estimate
from medtune.memory.fit import fit_micro_batch, with_micro_batch
from medtune.memory.plan import plan_memory

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
    cfg = compose(["trainer.micro_batch_size=auto"])  # on a GPU the budget defaults to its free memory
    with pytest.raises(ConfigError, match=r"needs a memory budget: set trainer\.memory_budget_gib"):
        plan_memory(cfg, budget_gib=None)  # a CPU run: no GPU to read a budget from
    with pytest.raises(ConfigError, match=r"must be a whole number of rows or 'auto'"):
        compose(["trainer.micro_batch_size=often"])
    with pytest.raises(ConfigError, match=r"trainer\.micro_batch_size=0 must be > 0"):
        compose(["trainer.micro_batch_size=0"])


def test_a_number_passes_through_and_json_output_stays_json() -> None:
    """Every caller (train, bench, memory) sends its cfg through the fit; a fixed size comes back untouched, and
    `python -m medtune.memory --json` with auto prints only JSON on stdout (the choice goes to stderr)."""
    import json
    import subprocess
    import sys

    cfg = compose([*GEMMA_4B[:-1], "trainer.micro_batch_size=3"])
    assert fit_micro_batch(cfg) == (cfg, {})
    proc = subprocess.run(
        [sys.executable, "-m", "medtune.memory", "--json", *GEMMA_4B, "trainer.memory_budget_gib=20"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["peak_gib"] <= 20 and "rows fit the budget" in proc.stderr
