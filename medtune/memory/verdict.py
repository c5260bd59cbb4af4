"""Plan before you rent: does a config fit GPUs of a given size, in which phase it peaks, and which switch makes it fit.

    python -m medtune.memory +experiment=paper_llama70b_fsdp world_size=2 gpu_memory_gib=24
    verdict = fit_verdict(cfg, world_size=2, gpu_memory_gib=24.0)   # verdict.lines(): the answer, one line each

A rank peaks in one of two phases (memory/estimate.py): loading, where every rank builds the whole model before
`fully_shard` splits it, or the training step. The budget is the card less the margin a run leaves unplanned
(plan.default_budget_gib). The step is planned for that budget as a run would plan it (rows, recomputed layers,
offloading: memory/plan.py); when it still does not fit, the switches the estimator models are tried, cheapest first:
every layer recomputed, then checkpointed inputs offloaded to CPU, then one row per micro-batch, then more FSDP ranks.
No switch lowers the load peak, and sharding.cpu_offload (FSDP parameters on the CPU) is not modelled: no number is
given for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from medtune.config import ConfigError, TrainConfig
from medtune.files.space import GIB
from medtune.memory.estimate import estimate
from medtune.memory.fit import with_micro_batch
from medtune.memory.plan import default_budget_gib, plan_memory

MAX_WORLD_SIZE = 64  # more FSDP ranks than this are not searched
SWITCHES: list[tuple[str, dict[str, Any]]] = [  # cumulative, cheapest first
    ("trainer.grad_ckpt_every=1 (every layer recomputed)", {"grad_ckpt_every": 1, "grad_ckpt_layers": None}),
    ("trainer.offload_activations=true", {"offload_activations": True}),
    ("trainer.micro_batch_size=1", {"micro_batch_size": 1}),
]


@dataclass
class Verdict:
    """The answer for one card size: both phases' predicted peaks per rank and the switches that make the step fit."""

    gpu_memory_gib: float
    budget_gib: float
    world_size: int
    load_peak_gib: float
    train_peak_gib: float  # the step as a run would plan it for the budget
    switches: list[tuple[str, float]] = field(default_factory=list)  # (cumulative switch, predicted train peak)
    fsdp_world_size: int | None = None  # the fewest FSDP ranks whose step fits, when switches alone do not

    @property
    def peak_phase(self) -> str:
        return "load" if self.load_peak_gib >= self.train_peak_gib else "train"

    @property
    def train_fix(self) -> str | None:
        """'' when the step fits as planned, the switches that make it fit, or None when none does."""
        if self.train_peak_gib <= self.budget_gib:
            return ""
        for i, (_, peak) in enumerate(self.switches):
            if peak <= self.budget_gib:
                return " + ".join(name for name, _ in self.switches[: i + 1])
        return None

    @property
    def fits(self) -> bool:
        return self.load_peak_gib <= self.budget_gib and self.train_fix == ""

    def as_dict(self) -> dict[str, Any]:
        """For --json."""
        out = dataclasses.asdict(self)
        out.update(fits=self.fits, peak_phase=self.peak_phase, train_fix=self.train_fix)
        return out

    def lines(self) -> list[str]:
        """The verdict in words, numbers in GiB per rank."""
        budget, load, train = self.budget_gib, self.load_peak_gib, self.train_peak_gib
        out = [
            f"{self.world_size} x {self.gpu_memory_gib:g} GiB: budget {budget:.2f} GiB per rank (the card less "
            f"max(2 GiB, 10%)); load peak {load:.2f} GiB, train peak {train:.2f} GiB: peaks while {self.peak_phase}ing"
        ]
        if self.fits:
            return [*out, f"fits: both phases under {budget:.2f} GiB"]
        fix = self.train_fix
        if load > budget:
            out.append(
                f"does not fit: load peak {load:.2f} GiB > {budget:.2f} GiB. No switch lowers it: every rank builds "
                "the whole model before fully_shard splits it. Needed: per-layer sharded loading (each rank "
                "materialises only its shard; issue 35 part 1, not built yet), or cards with "
                f">= {_card_for(load):.0f} GiB."
            )
        if fix == "":
            out.append(f"train step: fits ({train:.2f} GiB)")
        elif fix is not None:
            out.append(f"train step: {train:.2f} GiB as planned; fits with {fix} ({self._peak_of(fix):.2f} GiB)")
        else:
            tried = "; ".join(f"+ {name}: {peak:.2f} GiB" for name, peak in self.switches)
            more = (
                f"; the step fits from world_size={self.fsdp_world_size} with those switches"
                if self.fsdp_world_size
                else ""
            )
            out.append(f"train step: does not fit with any modelled switch ({tried}){more}")
        if load <= budget:
            out.append("does not fit: the train step" if fix is None else f"fits with {fix}")
        out.append("sharding.cpu_offload=true is not modelled by the estimator: no prediction for it")
        return out

    def _peak_of(self, fix: str) -> float:
        return next(peak for name, peak in self.switches if fix.endswith(name))


def _card_for(peak_gib: float) -> float:
    """The smallest card whose default budget holds `peak_gib` (inverse of plan.default_budget_gib)."""
    return max(peak_gib + 2.0, peak_gib / 0.9)


def _trainer(cfg: TrainConfig, **values: Any) -> TrainConfig:
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, **values))


def fit_verdict(
    cfg: TrainConfig, world_size: int, gpu_memory_gib: float, label_tokens_per_row: float | None = None
) -> Verdict:
    """Whether `cfg` fits `world_size` GPUs of `gpu_memory_gib` each, by phase, and what would make it fit."""
    budget = default_budget_gib(gpu_memory_gib, gpu_memory_gib)

    def train_peak(c: TrainConfig, ranks: int = world_size) -> float:
        return estimate(c, ranks, label_tokens_per_row=label_tokens_per_row).peak_bytes / GIB

    load = estimate(cfg if cfg.trainer.micro_batch_size != "auto" else with_micro_batch(cfg, 1), world_size)
    try:
        planned, _ = plan_memory(cfg, world_size, budget, label_tokens_per_row)
    except ConfigError:  # micro_batch_size=auto with nothing that fits: the plan for one row
        planned, _ = plan_memory(with_micro_batch(cfg, 1), world_size, budget, label_tokens_per_row)
    verdict = Verdict(gpu_memory_gib, budget, world_size, load.load_peak_bytes / GIB, train_peak(planned))
    if verdict.train_fix == "":
        return verdict
    switched, peak = planned, verdict.train_peak_gib
    for name, values in SWITCHES:
        candidate = _trainer(switched, **values)
        if train_peak(candidate) < peak:  # a switch that lowers nothing here (already so) is not offered
            switched, peak = candidate, train_peak(candidate)
            verdict.switches.append((name, peak))
    if verdict.train_fix is None and cfg.sharding.strategy == "fsdp":
        ranks = range(world_size + 1, MAX_WORLD_SIZE + 1)
        verdict.fsdp_world_size = next((n for n in ranks if train_peak(switched, n) <= budget), None)
    return verdict
