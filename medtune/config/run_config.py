"""A run's recorded config.yaml read back through the schema, for what comes after a run (report, export).

    cfg = load_run_config(run_dir)              # <run>/config.yaml, else Hydra's <run>/.hydra/config.yaml
    cfg = load_run_config(Path("a.config.yaml"))  # or a file
    path = run_config_path(run_dir)             # which file that is; None when the run has neither

The file is laid over the TrainConfig schema (OmegaConf.structured) and converted as a run's config is
(`to_train_config`), so a reader gets the typed, checked TrainConfig the run itself had: every rule the schema
applies (a data_mix.ratio replacing data_mix.weights, language codes normalised) has already been applied, and a
key the schema lacks is an error, not a value quietly ignored. Any problem is one ConfigError line naming the file
and the key.

Old runs keep loading: a key that has since been renamed or removed is rewritten by MIGRATIONS (below) before the
schema sees it, and only there. Rename or remove a config key, add its line to MIGRATIONS in the same change; the
test that loads every committed run under experiments/results fails until you do.

Hydra's .hydra/config.yaml (a job that died before writing config.yaml) is unresolved: its ${oc.env:...} values
are resolved here, against this machine's environment, not the run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from medtune.config.checks import ConfigError
from medtune.config.compose import to_train_config
from medtune.config.training import TrainConfig

log = logging.getLogger("medtune.config")


class Migration(NamedTuple):
    """One key older runs wrote that the schema no longer has."""

    old: str  # the dotted key as older config.yaml files have it
    new: str | None  # where its value belongs now; None: the setting is gone and older values do not matter
    why: str  # what changed and when, for the reader of this table


# Every renamed or removed config key, oldest first. None so far: every key a committed run wrote is still in the
# schema (tests/config/test_run_config.py loads all of them).
MIGRATIONS: tuple[Migration, ...] = ()

_ABSENT = object()


def run_config_path(run_dir: Path) -> Path | None:
    """The run's config.yaml, else Hydra's .hydra/config.yaml (a job that died early), else None."""
    for path in (Path(run_dir) / "config.yaml", Path(run_dir) / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    return None


def _read(path: Path) -> Any:
    from omegaconf import DictConfig, OmegaConf
    from yaml import YAMLError

    try:
        raw = OmegaConf.load(path)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix the file.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err}).") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config groups (model:, trainer:, ...), got a list.")
    return raw


def _pop(raw: Any, dotted: str) -> Any:
    """Take `dotted` out of the loaded file; _ABSENT when it is not there."""
    from omegaconf import DictConfig

    parent_key, _, last = dotted.rpartition(".")
    parent = raw
    for part in parent_key.split(".") if parent_key else []:
        parent = parent.get(part) if isinstance(parent, DictConfig) else None
    if not isinstance(parent, DictConfig) or last not in parent:
        return _ABSENT
    value = parent[last]
    del parent[last]
    return value


def migrate(raw: Any, where: str) -> Any:
    """The loaded file with every MIGRATIONS key moved to its new place (or dropped when it has none)."""
    from omegaconf import OmegaConf

    for step in MIGRATIONS:
        value = _pop(raw, step.old)
        if value is _ABSENT:
            continue
        if step.new is None:
            log.debug("%s: %s dropped (%s)", where, step.old, step.why)
            continue
        if OmegaConf.select(raw, step.new, default=_ABSENT) is not _ABSENT:
            raise ConfigError(
                f"{where}: both {step.old} (older name) and {step.new} are set; {step.why}. Keep only {step.new}."
            )
        OmegaConf.update(raw, step.new, value, force_add=True)
        log.debug("%s: %s read as %s (%s)", where, step.old, step.new, step.why)
    return raw


def load_run_config(run_dir_or_path: Path) -> TrainConfig:
    """A run's config.yaml (a run directory or the file itself) as the checked TrainConfig; ConfigError names the
    file and the key of anything it cannot take."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    given = Path(run_dir_or_path)
    path = run_config_path(given) if given.is_dir() else given
    if path is None or not path.is_file():
        raise ConfigError(f"{given}: no config.yaml (nor .hydra/config.yaml); is it a medtune run directory?")
    raw = migrate(_read(path), str(path))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), raw)
    except OmegaConfBaseException as err:  # a key the schema lacks, a value of the wrong type
        msg = str(err.msg).splitlines()[0]
        fix = "correct the value"
        if isinstance(err, ConfigKeyError):
            fix = (
                "correct the key, or if an older medtune wrote it, add it to MIGRATIONS (medtune/config/run_config.py)"
            )
        raise ConfigError(f"{path}: {err.full_key}: {msg}; {fix}.") from None
    try:
        return to_train_config(merged)
    except ConfigError as err:  # the schema's checks: the message names the key and the fix
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
