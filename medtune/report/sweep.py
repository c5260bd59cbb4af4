"""Compare the runs of a sweep from their run directories alone (no W&B needed): report.md, PNG plots, CSVs.

    python -m medtune.report runs/multirun/2026-11-24/12-00-00              # writes <DIR>/report/
    python -m medtune.report DIR --out results/mix --wandb                  # also publish to W&B when online

A run is any directory below DIR with a summary.json (config.yaml next to it, read through the schema by
medtune.config.load_run_config, gives the seed, model...); a directory with only Hydra's .hydra/config.yaml is a job
that died before writing its summary and is reported as failed. A run's ratio and English share are those its mix
recorded when it was built (summary.json: `data_mix/requested_ratio`, `data_mix/en/requested_share`); the languages
reported are every language a run was evaluated on (`eval/lang/<language>/...`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medtune.config import ConfigError, TrainConfig, load_run_config, run_config_path
from medtune.report.confidence import forgetting_from_predictions, restate, stored_forgetting
from medtune.report.power import paired_power

log = logging.getLogger("medtune.report")
FIRST_LANGS = ("ko", "en")  # the paper's languages lead every table, in the order its reports always had
CONFIG_KEYS = {  # report column -> dotted config key
    "seed": "seed",
    "model": "model.name",
    "quantization": "quantization.method",
    "packing": "packing.mode",
    "sharding": "sharding.strategy",
    "max_seq_len": "packing.max_seq_len",
    "micro_batch_size": "trainer.micro_batch_size",
    "grad_ckpt_every": "trainer.grad_ckpt_every",
    "attn": "model.attn_implementation",
    "lora_r": "lora.r",
    "wandb_project": "logger.project",
    "wandb_group": "logger.group",
}


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Run dirs below sweep_dir: those with summary.json, and Hydra job dirs that never wrote one (failed)."""
    sweep_dir = Path(sweep_dir)
    found = {p.parent for p in sweep_dir.rglob("summary.json")} | {p.parent for p in sweep_dir.rglob(".hydra")}
    # W&B's own copies and nested eval dirs are not runs: keep the outermost run dir of each subtree.
    runs = sorted(d for d in found if "wandb" not in d.relative_to(sweep_dir).parts)
    return [d for d in runs if not any(o != d and o in d.parents for o in runs)]


def read_config(run_dir: Path) -> TrainConfig | None:
    """The run's config.yaml (else Hydra's .hydra/config.yaml) through the schema; None when it has neither."""
    path = run_config_path(Path(run_dir))
    return load_run_config(path) if path is not None else None


def _get(config: TrainConfig | None, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def mix_of(summary: Mapping[str, Any], config: TrainConfig | None) -> tuple[str | None, float | None]:
    """(ratio label such as 10:3 or 2:1:1, English share of the requested mix); (None, None) without a mix.
    The run's own record of the mix it built (summary.json's data_mix/requested_ratio, data_mix/<lang>/requested_
    share); only a run without that record (older than it, eval-only, or dead before its mix was built) falls back
    to its config's weights, which the schema has already set from data_mix.ratio when that was given."""
    if summary.get("data_mix/requested_ratio") is not None:
        return str(summary["data_mix/requested_ratio"]), float(summary.get("data_mix/en/requested_share", 0.0))
    weights = config.data_mix.weights if config is not None else {}
    total = sum(weights.values())
    if total <= 0:
        return None, None
    return ":".join(f"{w:g}" for w in weights.values()), weights.get("en", 0.0) / total


def languages(df: pd.DataFrame) -> list[str]:
    """Every language the runs were evaluated on (eval/lang/<language>/acc, base's too): ko, en first, then A-Z."""
    found = {m.group(1) for c in df.columns if (m := re.fullmatch(r"(?:base/)?eval/lang/(.+)/acc", str(c)))}
    first = [lang for lang in FIRST_LANGS if lang in found]
    return first + sorted(found - set(first)) if found else list(FIRST_LANGS)


def evaluated(df: pd.DataFrame) -> pd.Series:
    """Per run: True when it has final-evaluation scores (eval/<task>/acc, eval/lang/<language>/acc). A stage=train
    run has none: its eval/loss is the held-out loss measured during training, and its watch is no evaluation."""
    cols = [c for c in df.columns if re.fullmatch(r"eval/.+/acc", str(c))]
    return df[cols].notna().any(axis=1) if cols else pd.Series(False, index=df.index)


def stages(df: pd.DataFrame) -> list[str]:
    """The `stage` settings (train, eval, train_eval) in the config.yaml of these runs, sorted; '?' when absent."""
    return sorted({str(_get(read_config(Path(p)), "stage") or "?") for p in df.get("path", [])})


def mix_languages(df: pd.DataFrame) -> list[str]:
    """The languages of the runs' mixes in their order (the ratio's 'en:ko:ja' header) as each run recorded them
    (data_mix/languages), else, for a run without that record, as its config gives them; en, ko without any."""
    order: dict[str, None] = {}
    for _, run in df.iterrows():
        recorded = run.get("data_mix/languages")
        if isinstance(recorded, str) and recorded:
            order.update(dict.fromkeys(recorded.split(",")))
            continue
        try:
            config = read_config(Path(run["path"]))
        except ConfigError:  # a job stopped by its own bad config: its languages are not known
            continue
        order.update(dict.fromkeys(config.data_mix.languages() if config is not None else []))
    return list(order) or ["en", "ko"]


def load_run(run_dir: Path, sweep_dir: Path, confidence: float | None = None) -> dict[str, Any]:
    """One flat row: where, status, mix, seed, model... and every summary.json key as it was written, or, with
    `confidence`, with every interval and significance flag at that level (`report/confidence.py`: `restate`)."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{summary_path}:{err.lineno}: not valid JSON ({err.msg}).") from err
        summary.setdefault("run/status", "ok")  # keeps the file's key order (runs.csv columns)
    else:
        summary = {"run/status": "failed", "run/error": "no summary.json (the job died before the end)"}
    try:
        config = read_config(run_dir)
    except ConfigError:
        if summary["run/status"] == "ok":
            raise
        config = None  # a sweep job stopped by its own bad config (e.g. its mix): listed as failed, not fatal
    ratio, en_share = mix_of(summary, config)
    row: dict[str, Any] = {"run": str(run_dir.relative_to(sweep_dir)) or ".", "path": str(run_dir)}
    row |= {"ratio": ratio, "en_share": en_share}
    row |= {col: _get(config, key) for col, key in CONFIG_KEYS.items()}
    row |= summary
    if confidence is not None and summary_path.is_file():
        row = restate(row, run_dir, config, confidence)
    row["status"] = row["run/status"]
    return row


def load_sweep(sweep_dir: Path, confidence: float | None = None) -> pd.DataFrame:
    """Every run below sweep_dir as one row, sorted by English share then seed; intervals at `confidence` if given."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such directory; pass the sweep directory (runs/multirun/...).")
    rows = [load_run(d, sweep_dir, confidence) for d in find_run_dirs(sweep_dir)]
    if not rows:
        raise FileNotFoundError(f"{sweep_dir}: no run directory (with summary.json or .hydra/) below it.")
    df = pd.DataFrame(rows)
    return df.sort_values(["en_share", "seed", "run"], na_position="last", kind="stable").reset_index(drop=True)


def base_metrics(df: pd.DataFrame, metric: str = "acc") -> dict[str, float | None]:
    """The base model's eval/lang/<lang>/<metric> (base/... keys), per language; None when no run has it."""
    out: dict[str, float | None] = {}
    for lang in languages(df):
        key = f"base/eval/lang/{lang}/{metric}"
        values = df[key].dropna().astype(float) if key in df else pd.Series(dtype=float)
        if values.nunique() > 1:
            log.warning("%s differs between runs (%s); the plots use its mean.", key, sorted(values.unique()))
        out[lang] = float(values.mean()) if len(values) else None
    return out


def across_seeds(df: pd.DataFrame, key: str, confidence: float = 0.95) -> pd.DataFrame:
    """Per ratio: n_seeds, mean, and a Student-t interval of the mean across seeds (NaN with one seed)."""
    from scipy import stats

    cols = ["ratio", "en_share", "n_seeds", "mean", "sd", "ci_low", "ci_high"]
    if key not in df:
        return pd.DataFrame(columns=cols)
    sub = df[df[key].notna() & df["en_share"].notna()]
    out = []
    for (ratio, share), grp in sub.groupby(["ratio", "en_share"], sort=False):
        values = grp[key].astype(float).to_numpy()
        n, mean = len(values), float(values.mean())
        sd = float(values.std(ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
        out.append([ratio, share, n, mean, sd, mean - half, mean + half])
    return pd.DataFrame(out, columns=cols).sort_values("en_share").reset_index(drop=True)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN), for the many tests of one table."""
    p = np.asarray(p_values, dtype=float)
    idx = [i for i in np.argsort(p) if math.isfinite(p[i])]
    adjusted, running = np.full(len(p), math.nan), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def forgetting_table(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per finished run and language: delta pp vs base, paired bootstrap CI, McNemar p, significance (+ Holm)."""
    out = []
    langs = languages(df)
    for _, run in df[df["status"] == "ok"].iterrows():
        recomputed: dict[str, dict[str, Any]] | None = None
        config = read_config(Path(run["path"]))
        for lang in langs:
            pre = f"forgetting/{lang}/"
            if pd.notna(run.get(pre + "delta_pp")) and pd.notna(run.get(pre + "p_mcnemar")):
                got = stored_forgetting(run, lang, config, confidence)
            else:
                if recomputed is None:
                    recomputed = forgetting_from_predictions(Path(run["path"]), config, confidence)
                if lang not in recomputed:
                    continue
                got = recomputed[lang]
            out.append(
                {"run": run["run"], "ratio": run["ratio"], "en_share": run["en_share"], "seed": run["seed"]}
                | {"lang": lang, "n": got["n"], "base_acc": got["base_acc"], "run_acc": got["run_acc"]}
                | {"delta_pp": got["delta_pp"], "ci_low_pp": got["ci_low"], "ci_high_pp": got["ci_high"]}
                | {"p_mcnemar": got["p_mcnemar"], "significant": got["significant"], "source": got["source"]}
                | paired_power(got, confidence)
            )
    cols = ["run", "ratio", "en_share", "seed", "lang", "n", "base_acc", "run_acc", "delta_pp", "ci_low_pp"]
    cols += ["ci_high_pp", "p_mcnemar", "significant", "source", "discordance", "mde_pp"]
    table = pd.DataFrame(out, columns=cols)
    table["p_holm"] = holm(table["p_mcnemar"].astype(float).tolist()) if len(table) else []
    return table


# Training-phase peaks per rank as `runtime/peak_memory.py memory_metrics` names them, the lm-eval stage's own peak,
# and the throughput that counts non-pad tokens only.
TRAIN_ALLOC, TRAIN_RESERVED = "sys/train/peak_alloc_gib", "sys/train/peak_reserved_gib"
EFFICIENCY_KEYS = (TRAIN_ALLOC, TRAIN_RESERVED, "sys/lm_eval/peak_reserved_gib", "train/useful_tokens_per_s")


def efficiency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean efficiency metrics per configuration; the label names only what varies between the runs."""
    keys = [k for k in (*EFFICIENCY_KEYS, "train/mfu") if k in df]
    sub = df[(df["status"] == "ok") & df[keys].notna().any(axis=1)] if keys else df.iloc[0:0]
    if sub.empty:
        return pd.DataFrame(columns=["config", "n_runs", *keys])
    candidates = ("ratio", *(c for c in CONFIG_KEYS if c not in ("seed", "wandb_project", "wandb_group")))
    varying = [c for c in candidates if c in sub and sub[c].astype(str).nunique() > 1]
    if varying:
        labels = sub[varying].astype(str).apply(lambda r: " ".join(f"{c}={v}" for c, v in r.items()), axis=1)
    else:
        labels = sub[["model", "quantization", "packing"]].astype(str).agg(" / ".join, axis=1)
    grouped = sub.assign(config=labels).groupby("config", sort=False)
    eff = grouped[keys].mean().reset_index()
    eff.insert(1, "n_runs", grouped.size().to_numpy())
    return eff
