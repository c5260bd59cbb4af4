"""Checks that need no model, run before anything heavy (and before torch is imported, where they can be).

    check_run(cfg, dict_cfg)   # medtune.train: raises ConfigError naming the key, the file or the launch, and the fix
    check_eval(cfg, dict_cfg)  # medtune.evaluate: keys, launch, tasks and their data, the adapter directory

`to_train_config` checks each value and the rules between groups; this module checks the config against the world
around it: keys nobody reads (`+trainer.max_step=5`), source and task names, the data files they need (present and
not empty), every dataset declared in data.datasets (prepared here, so a bad file, column or row stops the run with
its file, line and field before any model loads), each source under its own language, whether the launch (torchrun
or not, a GPU or not) fits `sharding` and `trainer.device`, and whether a per-layer FSDP load has a local checkpoint
to read. A training run that would fail on any of these after loading a model, or after hours of training (an
unknown `eval.tasks` name), stops here in about a second with exit code 2. Whether the resume target exists is
training's rule (training/checkpoint/resume.py: `check_target`, which medtune.train calls next, still before torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from pathlib import Path
from typing import Any

from medtune.config import WORST_LANG, ConfigError, DataConfig, TrainConfig
from medtune.runtime.launch import env_world, launched_by_torchrun

log = logging.getLogger("medtune.runtime.preflight")


def check_run(cfg: TrainConfig, dict_cfg: Any = None) -> None:
    """Every check of this module, in order of cost; `dict_cfg` (the composed DictConfig) adds the key check."""
    if dict_cfg is not None:
        check_known_keys(dict_cfg)
    check_launch(cfg)
    check_per_layer_source(cfg)
    check_dataset_files(cfg.data)
    if cfg.stage in ("train", "train_eval"):
        for language, specs in cfg.data_mix.sources.items():
            for spec in specs:
                check_source(spec, cfg.data, f"data_mix.sources.{language} ({spec})", training=True, language=language)
    if cfg.stage in ("eval", "train_eval") and cfg.eval.enabled:
        check_tasks(cfg)
    if cfg.stage in ("train", "train_eval") and cfg.eval.watch and cfg.eval.watch_every > 0:
        check_watch(cfg)


def check_eval(cfg: TrainConfig, dict_cfg: Any) -> None:
    """medtune.evaluate's checks that need no model: keys, launch (replicas allowed), tasks and their data, the
    adapter directory."""
    from medtune.data.prepare import resolve_dir

    check_known_keys(dict_cfg)
    check_launch(cfg, replicas_ok=True, entry="medtune.evaluate")
    check_per_layer_source(cfg)  # sharding=fsdp loads per layer here too (runtime/eval_model.py)
    check_dataset_files(cfg.data)  # a bad declared file stops here with its line and field, as in medtune.train
    check_tasks(cfg)
    if cfg.eval.adapter and not (resolve_dir(cfg.eval.adapter) / "adapter_config.json").is_file():
        raise ConfigError(
            f"eval.adapter={cfg.eval.adapter}: no adapter_config.json there; point it at a saved adapter directory "
            "(a run's <run dir>/adapter)."
        )


def check_known_keys(dict_cfg: Any) -> None:
    """Refuse keys that no schema field reads (a `+key=value` typo would be stored and silently ignored)."""
    from omegaconf import OmegaConf

    unknown = _unknown_keys(OmegaConf.to_container(dict_cfg, resolve=False), TrainConfig, "")
    if unknown:
        key, known = unknown[0]
        close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
        hint = f" Did you mean {key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}?" if close else ""
        raise ConfigError(
            f"{key} is not a setting medtune reads (it would be ignored).{hint} Known keys here: {', '.join(known)}."
        )


def _unknown_keys(node: Any, schema: type, prefix: str) -> list[tuple[str, list[str]]]:
    if not isinstance(node, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    out: list[tuple[str, list[str]]] = []
    for key, value in node.items():
        if key not in fields:
            out.append((f"{prefix}{key}", sorted(fields)))
            continue
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub):
            out += _unknown_keys(value, sub, f"{prefix}{key}.")
    return out


def check_launch(cfg: TrainConfig, replicas_ok: bool = False, entry: str = "medtune.train") -> None:
    """The number of processes fits `sharding`, and a GPU exists when `trainer.device=cuda` asks for one.

    `replicas_ok`: several processes with sharding=none are fine (evaluation: a whole model on every rank).
    """
    _, world, _ = env_world()
    strategy = cfg.sharding.strategy
    if strategy in ("ddp", "fsdp") and not launched_by_torchrun():
        raise ConfigError(
            f"sharding={strategy} needs a torchrun launch (one process per GPU): torchrun --nproc-per-node N "
            f"-m {entry} ... sharding={strategy} (N=1 is fine); or sharding=none for one process."
        )
    if strategy == "none" and world > 1 and not replicas_ok:
        raise ConfigError(f"launched with {world} processes but sharding=none; add sharding=ddp or sharding=fsdp.")
    if cfg.sharding.cpu_offload and cfg.trainer.device == "cpu":
        raise ConfigError("sharding.cpu_offload=true needs CUDA devices; set sharding.cpu_offload=false on CPU.")
    if cfg.trainer.device == "cuda":  # only this choice pays for importing torch here
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=auto or cpu.")


def check_per_layer_source(cfg: TrainConfig) -> None:
    """sharding.load=per_layer reads the safetensors of a local folder: a hub id is refused before anything loads."""
    model, sharding = cfg.model, cfg.sharding
    if sharding.strategy != "fsdp" or sharding.load != "per_layer" or model.init != "pretrained":
        return
    if model.source == "hf" and not Path(model.path).expanduser().is_dir():
        raise ConfigError(
            f"model.path={model.path} is not a local directory, but sharding.load=per_layer reads a local "
            "checkpoint one layer at a time: download it (`hf download <id> --local-dir DIR`) and set "
            "model.path=DIR, or set sharding.load=whole (every rank then loads the whole model first)."
        )


def check_dataset_files(data_cfg: DataConfig) -> None:
    """Prepare every dataset of data.datasets (cached after the first run): a bad one stops here."""
    if not data_cfg.datasets:
        return
    from medtune.data.prepare import prepare_source
    from medtune.data.sources.registry import dataset_sources

    for name, source in dataset_sources(data_cfg).items():
        try:
            manifest = prepare_source(source, data_cfg)
        except (OSError, ValueError) as err:  # DatasetError, BadRowError, a file that is not there
            message = str(err)
            prefix = "" if message.startswith("data.datasets.") else f"data.datasets.{name}: "
            raise ConfigError(prefix + message) from None
        if manifest["skipped"]:
            log.warning("data.datasets.%s: %d bad rows skipped (data.on_bad_row=skip)", name, len(manifest["skipped"]))


def check_source(
    spec: str, data_cfg: DataConfig, where: str, training: bool = False, language: str | None = None
) -> None:
    """`<source>:<split>` names a known source or view and split, and its raw files are here (warns when empty);
    with `language`, the source's records are in that language."""
    from medtune.data import assert_trainable
    from medtune.data.prepare import source_splits
    from medtune.data.sources.registry import parse_spec, resolve

    try:
        name, split = parse_spec(spec)
        source, _ = resolve(name, data_cfg)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"{where}: {err.args[0]}") from None
    if language is not None and source.language != language:
        raise ConfigError(
            f"{where}: {source.name} is in {source.language!r}, not {language!r}; list it under "
            f"data_mix.sources.{source.language} (every row of a language's sources counts towards its share)."
        )
    splits = source_splits(source, data_cfg)  # a data.datasets entry: from its copy, prepared by check_dataset_files
    if split not in splits:
        hint = source.split_hint
        raise ConfigError(f"{where}: {source.name} has no split {split!r}; its splits: {list(splits)}{hint}.")
    if training:
        try:
            assert_trainable(spec, data_cfg)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    try:
        files = source.files(data_cfg)  # [] from the hub
    except FileNotFoundError as err:
        raise ConfigError(
            f"{where}: {err} Point MEDTUNE_DATA_DIR (or data.data_dir) at the datasets' folder "
            "(../shared/data/README.md lists the layouts), or set data.hub=true with hub access."
        ) from None
    for path in files:
        if Path(path).stat().st_size == 0:
            log.warning("%s: %s is empty (0 bytes): it contributes no rows", where, path)


def check_tasks(cfg: TrainConfig) -> None:
    """Every `eval.tasks` name is a task, and the data its questions (and few-shot examples) come from is here."""
    from medtune.eval.tasks import all_tasks

    tasks = all_tasks(cfg.data)
    not_mcq = [t for t in cfg.eval.tasks if t in cfg.data.datasets and t not in tasks]
    if not_mcq:
        formats = {t: cfg.data.datasets[t].format for t in not_mcq}
        raise ConfigError(
            f"eval.tasks names {formats}: only a multiple-choice dataset (format: mcq) is an evaluation task; "
            "train on the others through data_mix.sources and take them out of eval.tasks."
        )
    unknown = [t for t in cfg.eval.tasks if t not in tasks]
    if unknown:
        close = {t: difflib.get_close_matches(t, list(tasks), n=1) for t in unknown}
        hints = "; ".join(f"{t} -> {c[0]}?" for t, c in close.items() if c)
        raise ConfigError(
            f"eval.tasks names unknown tasks {unknown}{' (' + hints + ')' if hints else ''}; known tasks: "
            f"{sorted(tasks)}."
        )
    for name in cfg.eval.tasks:
        spec = tasks[name]
        check_source(f"{spec.source}:{spec.split}", cfg.data, f"eval.tasks ({name})")
        if cfg.eval.num_fewshot > 0 and spec.fewshot:
            check_source(spec.fewshot, cfg.data, f"eval.tasks ({name} few-shot)")


def check_watch(cfg: TrainConfig) -> None:
    """`eval.watch` names tasks whose data is here; the guard's and keep's `lang:<language>` groups are watched."""
    from medtune.eval.tasks import TASKS

    unknown = [t for t in cfg.eval.watch if t not in TASKS]
    if unknown:
        raise ConfigError(f"eval.watch names unknown tasks {unknown}; known tasks: {sorted(TASKS)}.")
    for name in cfg.eval.watch:
        check_source(f"{TASKS[name].source}:{TASKS[name].split}", cfg.data, f"eval.watch ({name})")
    langs = sorted({TASKS[t].language for t in cfg.eval.watch if TASKS[t].domain == "medical"})
    tc = cfg.trainer
    wanted = [("trainer.guard.protect", g) for g in tc.guard.protect]
    wanted += [("trainer.keep_by", tc.keep_by)] if tc.keep == "best" else []
    for key, group in wanted:
        if (group.startswith("lang:") and group[5:] not in langs) or (group == WORST_LANG and not langs):
            raise ConfigError(
                f"{key}={group} needs a watched medical set in that language; the watch's languages: {langs} "
                f"(eval.watch={list(cfg.eval.watch)})."
            )
