"""Config of `python -m medtune.search` (the `search` group, medtune/conf/search/): which balance of languages to
train on, from short proxy runs.

    python -m medtune.search search=ratio_ja search.seeds=[0,1,2] model=tiny_llama
    cfg = compose_search(["+search=ratio_ja", "search.margin=0.1"])     # SearchConfig, every check run

A search file names the medtune.train overrides every proxy run starts from (`train`), the language whose share
varies (`vary`; the other languages of the data mix keep their proportions), the shares and seeds (the budget:
shares x seeds runs of `steps` steps each), the sets whose gain is sought (`target`) and those that must not fall
by more than `margin` (`protect`, as trainer.guard.protect: eval set names or `lang:<language>`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from medtune.config.checks import ConfigError, check_choice, check_positive
from medtune.config.location import CONF, check_choices, searchpath_overrides


@dataclass
class SearchConfig:
    """A share search: the proxy runs (shares x seeds, `steps` each), what they are scored on, the fit."""

    train: list[str] = field(default_factory=list)  # medtune.train overrides of every run, e.g. [+experiment=x]
    vary: str | None = None  # the language whose share of the training mix is searched
    shares: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # of `vary`, in (0, 1)
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # training seeds per share
    steps: int = 20  # optimizer steps of a proxy run (the confirming run takes the config's trainer.max_steps)
    target: list[str] = field(default_factory=list)  # eval sets / lang:<language> whose gain is maximised
    protect: list[str] = field(default_factory=list)  # eval sets / lang:<language> that must hold
    # in the unit of `metric`: nats of mean gold-letter log-likelihood (gold_ll) or percentage points (acc)
    margin: float = 0.05
    level: float = 0.95  # one-sided: a share is safe when P(protected change > -margin) >= level, per group
    metric: str = "gold_ll"  # gold_ll | acc: what is fitted and held to the margin (accuracy is reported either way)
    degree: int = 2  # of the polynomial in the share fitted to each group's change (1: linear)
    bootstrap_samples: int = 1000  # resamples of seeds (within a share) and questions (paired across runs)
    grid_points: int = 101  # shares between the lowest and highest tried at which the fit is read (no extrapolation)
    confirm: bool = False  # train once at the recommended shares with full steps; predicted vs measured
    dir: str | None = None  # the search's folder; None: $MEDTUNE_RUNS_DIR (or runs)/search/<the search's name>
    job_timeout_s: float | None = None  # a proxy run still running after this is stopped and recorded as failed
    # proxy runs at a time, each its own process: one GPU holds several runs of a small model, whose steps are
    # bound by the host (launches, Python), not by the GPU; their base model is scored once (the cache's lock)
    parallel: int = 1
    seed: int = 0  # of the bootstrap

    def __post_init__(self) -> None:
        check_choice("search.metric", self.metric, ("gold_ll", "acc"))
        check_choice("search.degree", self.degree, (1, 2))
        check_positive("search.steps", self.steps)
        check_positive("search.bootstrap_samples", self.bootstrap_samples)
        check_positive("search.job_timeout_s", self.job_timeout_s, allow_none=True)
        check_positive("search.parallel", self.parallel)
        if self.grid_points < 2:
            raise ConfigError(f"search.grid_points={self.grid_points} must be >= 2.")
        bad = [s for s in self.shares if not (isinstance(s, int | float) and math.isfinite(s) and 0 < s < 1)]
        if bad:
            raise ConfigError(f"search.shares has {bad}; each share of search.vary must lie strictly between 0 and 1.")
        self.shares = sorted(set(float(s) for s in self.shares))
        if len(self.shares) < 2:
            raise ConfigError(f"search.shares={self.shares} needs at least two different shares to fit a response.")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"search.seeds={list(self.seeds)} must name at least one seed, each once.")
        if not self.margin >= 0:
            raise ConfigError(f"search.margin={self.margin} must be >= 0 (in the unit of search.metric).")
        if not 0.5 < self.level < 1.0:
            raise ConfigError(f"search.level={self.level} must be in (0.5, 1).")
        for key in ("target", "protect"):
            for name in getattr(self, key):
                if not name or (name.startswith("lang:") and len(name) <= 5):
                    raise ConfigError(f"search.{key} has {name!r}; name an eval set or lang:<language>.")

    def require_plan(self) -> None:
        """What a search cannot start without (a file of the group may leave them to the command line)."""
        examples = {
            "vary": "search.vary=ja",
            "target": "search.target=[ja_exam]",
            "protect": "search.protect=[lang:ko]",
        }
        for key, example in examples.items():
            if not getattr(self, key):
                raise ConfigError(
                    f"search.{key} is not set; give it in the search file or on the command line: {example}."
                )
        overlap = sorted(set(self.target) & set(self.protect))
        if overlap:
            raise ConfigError(f"search.target and search.protect both name {overlap}; a set is one or the other.")


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """(the search's overrides, medtune.train's): `search=x` / `search.k=v` go to the search, the rest to training."""
    mine, rest = [], []
    for arg in args:
        key = arg.lstrip("+~")
        if key.startswith("search=") or key.startswith("search."):
            mine.append("+" + arg if arg.startswith("search=") else arg)
        else:
            rest.append(arg)
    return mine, rest


def compose_search(overrides: list[str]) -> SearchConfig:
    """The `search` group composed alone with its overrides (`+search=<name>`, `search.k=v`), checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not any(o.startswith("+search=") for o in overrides):
        shipped = ", ".join(sorted(p.stem for p in (CONF / "search").glob("*.yaml")))
        raise ConfigError(f"choose a search: search=<name> (a file in search/; shipped: {shipped}).")
    ConfigStore.instance().store(group="search", name="search_schema", node=SearchConfig)
    check_choices(overrides)
    os.environ.setdefault("MEDTUNE_RUN_STAMP", "compose")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            composed = hydra_compose(overrides=[*overrides, *searchpath_overrides()])
        obj: Any = OmegaConf.to_object(composed)["search"]
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or ''}: {err.msg}".strip(": ")) from err
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    if not isinstance(obj, SearchConfig):
        raise ConfigError("the search file does not extend search_schema; start it with `defaults: [search_schema]`.")
    return obj
