"""Plan before you rent: does a config fit GPUs of a given size, in which phase it peaks, and which switch makes it fit.

    python -m medtune.memory +experiment=paper_llama70b_fsdp world_size=2 gpu_memory_gib=24
    verdict = fit_verdict(cfg, world_size=2, gpu_memory_gib=24.0)   # verdict.lines(): the answer, one line each

A rank peaks in one of two phases (memory/estimate.py): loading (with sharding.load=per_layer its shard plus one
decoder layer or the root; otherwise the whole model, built before `fully_shard` splits it), or the training step.
The budget is the card less the margin a run leaves unplanned (plan.default_budget_gib). The step is planned for that
budget as a run would plan it (rows, recomputed layers, offloading: memory/plan.py); when it still does not fit, the
switches the estimator models are tried, cheapest first: every layer recomputed, then checkpointed inputs offloaded
to CPU, then one row per micro-batch, then FSDP's CPU offload (sharding.cpu_offload), then more FSDP ranks. A load
that does not fit tries sharding.load=per_layer, then sharding.cpu_offload. The CPU-offload figures are predicted
from the config and not yet measured on a GPU.
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
OFFLOAD = ("sharding.cpu_offload=true", "sharding")
# (name, config group, values): cumulative, cheapest first; the sharding ones only under sharding=fsdp
SWITCHES: list[tuple[str, str, dict[str, Any]]] = [
    ("trainer.grad_ckpt_every=1 (every layer recomputed)", "trainer", {"grad_ckpt_every": 1, "grad_ckpt_layers": None}),
    ("trainer.offload_activations=true", "trainer", {"offload_activations": True}),
    ("trainer.micro_batch_size=1", "trainer", {"micro_batch_size": 1}),
    (*OFFLOAD, {"cpu_offload": True}),
]
LOAD_SWITCHES: list[tuple[str, str, dict[str, Any]]] = [
    ("sharding.load=per_layer", "sharding", {"load": "per_layer"}),
    (*OFFLOAD, {"cpu_offload": True}),
]


def _first_fit(switches: list[tuple[str, float]], budget: float) -> str | None:
    """The cumulative switches up to the first whose peak fits the budget, or None."""
    for i, (_, peak) in enumerate(switches):
        if peak <= budget:
            return " + ".join(name for name, _ in switches[: i + 1])
    return None


@dataclass
class Verdict:
    """The answer for one card size: both phases' predicted peaks per rank and the switches that make each fit."""

    gpu_memory_gib: float
    budget_gib: float
    world_size: int
    load_peak_gib: float
    train_peak_gib: float  # the step as a run would plan it for the budget
    switches: list[tuple[str, float]] = field(default_factory=list)  # (cumulative switch, predicted train peak)
    load_switches: list[tuple[str, float]] = field(default_factory=list)  # (cumulative switch, predicted load peak)
    fsdp_world_size: int | None = None  # the fewest FSDP ranks whose step fits, when switches alone do not
    offloaded_cpu_gib: float = 0.0  # pinned CPU memory per rank with sharding.cpu_offload=true

    @property
    def peak_phase(self) -> str:
        return "load" if self.load_peak_gib >= self.train_peak_gib else "train"

    @property
    def train_fix(self) -> str | None:
        """'' when the step fits as planned, the switches that make it fit, or None when none does."""
        return "" if self.train_peak_gib <= self.budget_gib else _first_fit(self.switches, self.budget_gib)

    @property
    def load_fix(self) -> str | None:
        """'' when loading fits as configured, the switches that make it fit, or None when none does."""
        return "" if self.load_peak_gib <= self.budget_gib else _first_fit(self.load_switches, self.budget_gib)

    @property
    def fits(self) -> bool:
        return self.load_fix == "" and self.train_fix == ""

    def as_dict(self) -> dict[str, Any]:
        """For --json."""
        out = dataclasses.asdict(self)
        out.update(fits=self.fits, peak_phase=self.peak_phase, train_fix=self.train_fix, load_fix=self.load_fix)
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
        out.append(self._load_line())
        fix = self.train_fix
        if fix == "":
            out.append(f"train step: fits ({train:.2f} GiB)")
        elif fix is not None:
            out.append(
                f"train step: {train:.2f} GiB as planned; fits with {fix} ({_peak_of(self.switches, fix):.2f} GiB)"
            )
        else:
            tried = "; ".join(f"+ {name}: {peak:.2f} GiB" for name, peak in self.switches)
            out.append(f"train step: does not fit with any modelled switch ({tried})")
        if self.fsdp_world_size:
            out.append(f"without sharding.cpu_offload, the step fits from world_size={self.fsdp_world_size}")
        if self.load_fix is None or fix is None:
            out.append(f"does not fit: the {'load' if self.load_fix is None else 'train step'}")
        else:
            names = [n for part in (self.load_fix, fix) if part for n in part.split(" + ")]
            out.append("fits with " + " + ".join(dict.fromkeys(names)))
        if any(name == OFFLOAD[0] for name, _ in [*self.switches, *self.load_switches]):
            out.append(
                f"sharding.cpu_offload=true keeps the FSDP shards, gradients and optimizer state in pinned CPU memory "
                f"({self.offloaded_cpu_gib:.2f} GiB per rank); its figures are predicted, not yet measured on a GPU"
            )
        return out

    def _load_line(self) -> str:
        load, budget, fix = self.load_peak_gib, self.budget_gib, self.load_fix
        if fix == "":
            return f"load: fits ({load:.2f} GiB)"
        if fix is not None:
            return f"load: {load:.2f} GiB as configured; fits with {fix} ({_peak_of(self.load_switches, fix):.2f} GiB)"
        tried = "".join(f"; + {name}: {peak:.2f} GiB" for name, peak in self.load_switches)
        return (
            f"does not fit: load peak {load:.2f} GiB > {budget:.2f} GiB{tried}; cards with >= {_card_for(load):.0f} GiB"
        )


def _peak_of(switches: list[tuple[str, float]], fix: str) -> float:
    return next(peak for name, peak in switches if fix.endswith(name))


def _card_for(peak_gib: float) -> float:
    """The smallest card whose default budget holds `peak_gib` (inverse of plan.default_budget_gib)."""
    return max(peak_gib + 2.0, peak_gib / 0.9)


def _switched(cfg: TrainConfig, group: str, values: dict[str, Any]) -> TrainConfig:
    return dataclasses.replace(cfg, **{group: dataclasses.replace(getattr(cfg, group), **values)})


def _applicable(cfg: TrainConfig, switches: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[str, str, dict]]:
    """The switches that exist for this config (the sharding ones under sharding=fsdp only)."""
    return [sw for sw in switches if sw[1] != "sharding" or cfg.sharding.strategy == "fsdp"]


def _cumulative(cfg: TrainConfig, switches: list, peak_of: Any, start: float) -> tuple[TrainConfig, list]:
    """Each switch on top of the ones before it that lowered the peak; (the last config, [(name, peak)])."""
    out, peak = [], start
    for name, group, values in _applicable(cfg, switches):
        candidate = _switched(cfg, group, values)
        if peak_of(candidate) < peak:  # a switch that lowers nothing here (already so) is not offered
            cfg, peak = candidate, peak_of(candidate)
            out.append((name, peak))
    return cfg, out


def fit_verdict(
    cfg: TrainConfig, world_size: int, gpu_memory_gib: float, label_tokens_per_row: float | None = None
) -> Verdict:
    """Whether `cfg` fits `world_size` GPUs of `gpu_memory_gib` each, by phase, and what would make it fit."""
    budget = default_budget_gib(gpu_memory_gib, gpu_memory_gib)

    def train_peak(c: TrainConfig, ranks: int = world_size) -> float:
        return estimate(c, ranks, label_tokens_per_row=label_tokens_per_row).peak_bytes / GIB

    def load_peak(c: TrainConfig) -> float:
        return (
            estimate(c if c.trainer.micro_batch_size != "auto" else with_micro_batch(c, 1), world_size).load_peak_bytes
            / GIB
        )

    try:
        planned, _ = plan_memory(cfg, world_size, budget, label_tokens_per_row)
    except ConfigError:  # micro_batch_size=auto with nothing that fits: the plan for one row
        planned, _ = plan_memory(with_micro_batch(cfg, 1), world_size, budget, label_tokens_per_row)
    verdict = Verdict(gpu_memory_gib, budget, world_size, load_peak(cfg), train_peak(planned))
    if cfg.sharding.strategy == "fsdp":
        offloaded = estimate(_switched(planned, "sharding", {"cpu_offload": True}), world_size)
        verdict.offloaded_cpu_gib = offloaded.parts["cpu/offloaded"] / GIB
    if verdict.load_fix != "":
        _, verdict.load_switches = _cumulative(cfg, LOAD_SWITCHES, load_peak, verdict.load_peak_gib)
    if verdict.train_fix == "":
        return verdict
    switched, verdict.switches = _cumulative(planned, SWITCHES, train_peak, verdict.train_peak_gib)
    without_offload = [(name, peak) for name, peak in verdict.switches if name != OFFLOAD[0]]
    if cfg.sharding.strategy == "fsdp" and _first_fit(without_offload, budget) is None:
        # more ranks instead of CPU offload (which costs speed): the fewest whose step fits with the other switches
        switched = _switched(switched, "sharding", {"cpu_offload": cfg.sharding.cpu_offload})
        ranks = range(world_size + 1, MAX_WORLD_SIZE + 1)
        verdict.fsdp_world_size = next((n for n in ranks if train_peak(switched, n) <= budget), None)
    return verdict
