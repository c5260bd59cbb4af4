"""Config schema of the logger group: W&B (offline unless asked), local csv/jsonl, or nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from medtune.config.checks import check_choice, check_positive


@dataclass
class LoggerConfig:
    """Experiment tracking: W&B (offline unless asked), local csv/jsonl, or nothing."""

    backend: str = "wandb"  # wandb | csv | jsonl | none
    project: str = "medtune"
    entity: str | None = None
    mode: str = "offline"  # offline | online (online needs WANDB_API_KEY or a prior `wandb login`)
    group: str | None = None  # None: the Hydra sweep (`<date>_<time>`) in a multirun, no group otherwise
    tags: list[str] = field(default_factory=list)
    name: str | None = None  # W&B run name; None: the run directory's name
    job_type: str | None = None  # W&B job type, e.g. train | eval | report
    init_timeout_s: float = 30.0  # longest wait for W&B to start (and per request); then local files only
    finish_timeout_s: float = 30.0  # longest wait for the upload at the end of an online run

    def __post_init__(self) -> None:
        check_choice("logger.backend", self.backend, ("wandb", "csv", "jsonl", "none"))
        check_choice("logger.mode", self.mode, ("offline", "online"))
        check_positive("logger.init_timeout_s", self.init_timeout_s)
        check_positive("logger.finish_timeout_s", self.finish_timeout_s)
