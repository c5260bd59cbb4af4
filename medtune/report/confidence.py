"""A sweep report at a confidence level its runs were not evaluated at: every interval and flag recomputed, or none.

A run's summary.json holds its Wilson intervals (`eval/<group>/acc_ci_*`, `base/eval/...`), its paired bootstrap
intervals and its significance flags (`forgetting/<group>/...`) at the run's `eval.confidence`.
`python -m medtune.report DIR --confidence 0.9` must not print those under a 90% label, so for a run evaluated at
another level every such key is recomputed from the run's stored predictions (`eval/base/predictions.jsonl` and
`eval/<label>/predictions.jsonl`), with the run's own bootstrap resamples and seed. A run whose predictions are not
there makes the report refuse, naming the run and the way out.

The level a run was evaluated at: its `*/confidence` keys; for summaries older than those keys, `eval.confidence`
in its config.yaml (read through the schema: medtune.config.load_run_config); for a run with neither, medtune's
default (0.95), the only level such runs could have used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medtune.config import EvalConfig, TrainConfig
from medtune.eval.forgetting import forgetting, forgetting_metrics
from medtune.eval.scoring import read_predictions
from medtune.eval.stats import format_level
from medtune.eval.summary import summarise

SECTIONS = ("eval/", "base/eval/", "forgetting/")  # the summary keys an evaluation writes
LEVEL_KEYS = ("_ci_low", "_ci_high", "significant", "/confidence")  # key endings whose value depends on the level
RECOMPUTED = "report/levels_recomputed_from"  # column: the level a run's intervals were recomputed from


def _config_eval(config: TrainConfig | None) -> EvalConfig:
    """The run's eval section (medtune's defaults for a run without a config.yaml)."""
    return config.eval if config is not None else EvalConfig()


def _recorded(row: Mapping[str, Any], suffix: str) -> set[float]:
    """The distinct finite values of every `<section>.../<suffix>` key of a summary row."""
    return {
        float(value)
        for key, value in row.items()
        if str(key).startswith(SECTIONS)
        and str(key).endswith(suffix)
        and isinstance(value, int | float)
        and math.isfinite(value)
    }


def stored_level(row: Mapping[str, Any], config: TrainConfig | None, where: str) -> float:
    """The confidence level a run's intervals were computed at (see the module docstring for where it comes from)."""
    levels = _recorded(row, "/confidence")
    if len(levels) > 1:
        raise ValueError(f"{where}: summary.json mixes confidence levels {sorted(levels)}; re-evaluate the run.")
    if levels:
        return levels.pop()
    return float(_config_eval(config).confidence)


def bootstrap_settings(row: Mapping[str, Any], config: TrainConfig | None) -> tuple[int, int]:
    """(resamples, seed) of the run's paired bootstrap: its recorded keys, else its config, else the defaults."""
    cfg = _config_eval(config)
    samples = _recorded(row, "/bootstrap_samples") or {cfg.bootstrap_samples}
    seeds = _recorded(row, "/bootstrap_seed") or {cfg.seed}
    return int(max(samples)), int(max(seeds))


def cluster_setting(config: TrainConfig | None) -> str | None:
    """The run's eval.cluster_by (None: its paired bootstrap resampled questions), so a recomputation matches it."""
    return _config_eval(config).cluster_by


def prediction_files(run_dir: Path) -> tuple[Path | None, Path | None]:
    """(eval/base/predictions.jsonl, eval/<label>/predictions.jsonl of the fine-tuned model), each None if absent."""
    eval_dir = Path(run_dir) / "eval"
    base = eval_dir / "base" / "predictions.jsonl"
    tuned = sorted(p for p in eval_dir.glob("*/predictions.jsonl") if p.parent.name != "base")
    if len(tuned) > 1:
        raise ValueError(f"{eval_dir}: predictions of {[p.parent.name for p in tuned]}; which one is the run's?")
    return (base if base.is_file() else None), (tuned[0] if tuned else None)


def read_rows(path: Path) -> list[dict]:
    """Prediction rows; older files name the question `doc_id`, the pairing uses `id`."""

    return [r if "id" in r else {**r, "id": r.get("doc_id")} for r in read_predictions(path)]


def recompute(run_dir: Path, row: Mapping[str, Any], config: TrainConfig | None, confidence: float) -> dict[str, Any]:
    """Every eval/, base/eval/ and forgetting/ key that the run's predictions give, at `confidence`."""

    base_path, tuned_path = prediction_files(run_dir)
    base = read_rows(base_path) if base_path else None
    tuned = read_rows(tuned_path) if tuned_path else None
    out: dict[str, Any] = {}
    if tuned is not None:
        out |= summarise(tuned, "eval", confidence)
    if base is not None:
        out |= summarise(base, "base/eval" if tuned is not None else "eval", confidence)
    if base is not None and tuned is not None:
        n_boot, seed = bootstrap_settings(row, config)
        out |= forgetting_metrics(forgetting(base, tuned, confidence, n_boot, seed, cluster_setting(config)))
    return out


def restate(row: dict[str, Any], run_dir: Path, config: TrainConfig | None, confidence: float) -> dict[str, Any]:
    """The summary row with every interval and significance flag at `confidence`; raises ValueError if impossible."""
    dependent = [k for k in row if k.startswith(SECTIONS) and k.endswith(LEVEL_KEYS)]
    level = stored_level(row, config, str(run_dir))
    if not dependent or math.isclose(level, confidence, rel_tol=0.0, abs_tol=1e-12):
        return row
    fresh = recompute(run_dir, row, config, confidence)
    missing = sorted(k for k in dependent if k not in fresh)
    if missing:
        base, tuned = prediction_files(run_dir)
        absent = [f"eval/{name}/predictions.jsonl" for name, path in (("base", base), ("<label>", tuned)) if not path]
        why = f"without {' and '.join(absent)}" if absent else "from its predictions, which do not cover them"
        raise ValueError(
            f"{run_dir}: its intervals and significance flags were computed at {format_level(level)} and the report "
            f"was asked for {format_level(confidence)}, but {len(missing)} of them (e.g. {missing[0]}) cannot be "
            f"recomputed {why}. Run the report at --confidence {level:g}, or re-evaluate the run with "
            f"eval.confidence={confidence:g}."
        )
    return row | fresh | {RECOMPUTED: level}


def stored_forgetting(run: Mapping[str, Any], lang: str, config: TrainConfig | None, confidence: float) -> dict:
    """A run's stored forgetting numbers for one language; ValueError if they were computed at another level."""
    pre = f"forgetting/{lang}/"
    level = stored_level(run, config, run["path"])
    if not math.isclose(level, confidence, rel_tol=0.0, abs_tol=1e-12):
        raise ValueError(
            f"{run['path']}: forgetting intervals at {format_level(level)}, asked for {format_level(confidence)}; "
            "load the sweep with load_sweep(dir, confidence) so that they are recomputed, never relabelled."
        )
    keys = ("n", "base_acc", "run_acc", "delta_pp", "p_mcnemar", "b_base_only", "c_run_only")
    got = {k: run.get(pre + k) for k in keys}
    got |= {"ci_low": run.get(pre + "delta_pp_ci_low"), "ci_high": run.get(pre + "delta_pp_ci_high")}
    significant = bool(run.get(pre + "significant")) and math.isfinite(float(run.get(pre + "p_mcnemar")))
    return got | {"significant": significant, "source": "summary"}


def forgetting_from_predictions(run_dir: Path, config: TrainConfig | None, confidence: float) -> dict[str, dict]:
    """Per-language forgetting numbers recomputed from the run's predictions ({} without them), same shape."""

    base, tuned = prediction_files(run_dir)
    if base is None or tuned is None:
        return {}
    n_boot, seed = bootstrap_settings({}, config)
    out = {}
    for r in forgetting(read_rows(base), read_rows(tuned), confidence, n_boot, seed, cluster_setting(config)):
        if r["group"].startswith("lang/"):
            got = {k: r[k] for k in ("n", "base_acc", "run_acc", "delta_pp", "p_mcnemar", "significant")}
            got |= {"b_base_only": r["b_base_only"], "c_run_only": r["c_run_only"]}
            got |= {"ci_low": r["delta_pp_ci_low"], "ci_high": r["delta_pp_ci_high"], "source": "predictions"}
            out[r["group"].removeprefix("lang/")] = got
    return out
