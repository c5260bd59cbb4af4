"""What a built mix holds, as flat `data_mix/...` keys (logged, summarised) and as the console table printed at start.

Per language and per source: the pool, the rows taken (repeats counted), the rows left out and held out, tokens,
the realised share in examples and tokens, and the requested share; the achieved ratio in the mix's unit.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from medtune.config import DataMixConfig

# per language and per source in the report; repeated = copies beyond the first, left_out = in neither set
STATS = ("pool_examples", "pool_tokens", "examples", "tokens", "unique", "repeated", "left_out")
STATS += ("heldout_examples", "heldout_tokens")


def source_stats(src: Any) -> dict[str, int]:
    """Counts of one source's draw (a medtune.data.mix.SourceDraw): pool, taken, repeats, left out, held out."""
    picked = set(src.picks)
    held = [i for i in range(src.consumed) if src.held[i]]
    return {
        "pool_examples": len(src.rows),
        "pool_tokens": sum(src.tokens),
        "examples": len(src.picks),
        "tokens": sum(src.tokens[i] for i in src.picks),
        "unique": len(picked),
        "repeated": len(src.picks) - len(picked),
        "left_out": len(src.rows) - len(picked) - len(held),
        "heldout_examples": len(held),
        "heldout_tokens": sum(src.tokens[i] for i in held),
    }


def mix_report(cfg: DataMixConfig, sources: list[Any], budget: int, targets: Mapping[str, Fraction]) -> dict[str, Any]:
    """The flat `data_mix/...` report of a built mix: per language and per source, counts, tokens, shares."""
    report: dict[str, Any] = {
        "data_mix/unit": cfg.unit,
        "data_mix/budget": budget,
        "data_mix/budget_auto": cfg.budget is None,
        "data_mix/upsample": cfg.upsample,
        "data_mix/max_repeat": cfg.max_repeat,
        "data_mix/heldout_frac": cfg.heldout_frac,
        "data_mix/seed": cfg.seed,
    }
    langs = cfg.languages()
    per_lang = {lang: dict.fromkeys(STATS, 0) for lang in langs}
    for src in sources:
        stats = source_stats(src)
        for key, value in stats.items():
            per_lang[src.lang][key] += value
            report[f"data_mix/{src.lang}/{src.spec}/{key}"] = value
        report[f"data_mix/{src.lang}/{src.spec}/requested_share"] = float(src.share)
    total = {key: sum(stats[key] for stats in per_lang.values()) for key in STATS}
    for src in sources:
        for unit in ("examples", "tokens"):
            value = report[f"data_mix/{src.lang}/{src.spec}/{unit}"]
            report[f"data_mix/{src.lang}/{src.spec}/share_{unit}"] = value / total[unit] if total[unit] else 0.0
    for lang in langs:
        report[f"data_mix/{lang}/weight"] = float(cfg.weights.get(lang, 0))
        report[f"data_mix/{lang}/requested_share"] = float(sum(s.share for s in sources if s.lang == lang))
        report[f"data_mix/{lang}/target_{cfg.unit}"] = float(targets.get(lang, 0))
        for key, value in per_lang[lang].items():
            report[f"data_mix/{lang}/{key}"] = value
        for unit in ("examples", "tokens"):
            report[f"data_mix/{lang}/share_{unit}"] = per_lang[lang][unit] / total[unit] if total[unit] else 0.0
    report["data_mix/train_examples"], report["data_mix/train_tokens"] = total["examples"], total["tokens"]
    report["data_mix/heldout_examples"] = total["heldout_examples"]
    report["data_mix/heldout_tokens"] = total["heldout_tokens"]
    report["data_mix/requested_ratio"] = ":".join(f"{cfg.weights.get(lang, 0):g}" for lang in langs)
    report["data_mix/achieved_ratio"] = _ratio_text(cfg, langs, {lang: per_lang[lang][cfg.unit] for lang in langs})
    report["data_mix/languages"] = ",".join(langs)
    return report


def _ratio_text(cfg: DataMixConfig, langs: list[str], units: dict[str, int]) -> str:
    """Achieved units scaled so the first weighted language shows its requested weight: '10:3.0004'."""
    ref = next(lang for lang in langs if cfg.weights.get(lang, 0) > 0)
    if units[ref] == 0:
        return "n/a"
    scale = cfg.weights[ref] / units[ref]
    return ":".join(f"{units[lang] * scale:.4f}".rstrip("0").rstrip(".") for lang in langs)


def format_mix_report(report: Mapping[str, Any]) -> str:
    """A console table of a build_mix report: per language and per source, rows, repeats, tokens and shares."""
    unit = report["data_mix/unit"]
    head = (
        f"data mix by {unit}: requested {report['data_mix/requested_ratio']}, achieved "
        f"{report['data_mix/achieved_ratio']} ({report['data_mix/languages'].replace(',', ':')}); budget "
        f"{report['data_mix/budget']:,}{' (auto)' if report['data_mix/budget_auto'] else ''}, seed "
        f"{report['data_mix/seed']}, upsample {'on' if report['data_mix/upsample'] else 'off'}"
    )
    cols = ("pool_examples", "examples", "unique", "repeated", "left_out", "heldout_examples", "tokens")
    names = ("pool", "train", "unique", "repeated", "left out", "held out", "train tokens", "share", "asked")
    lines = [head, f"{'language / source':<28}" + "".join(f"{n:>14}" for n in names)]
    total = dict.fromkeys(cols, 0)
    for lang in report["data_mix/languages"].split(","):
        head_, tail = f"data_mix/{lang}/", "/requested_share"
        specs = [k[len(head_) : -len(tail)] for k in report if k.startswith(head_) and k.endswith(tail)]
        specs = [spec for spec in specs if spec]  # the language's own key gives an empty spec
        for label, prefix in [(lang, f"data_mix/{lang}")] + [(f"  {s}", f"data_mix/{lang}/{s}") for s in specs]:
            cells = [report[f"{prefix}/{c}"] for c in cols] + [report[f"{prefix}/share_{unit}"]]
            cells.append(report[f"{prefix}/requested_share"])
            lines.append(f"{label:<28}" + "".join(f"{c:>14,}" if isinstance(c, int) else f"{c:>14.4f}" for c in cells))
        for c in cols:
            total[c] += report[f"data_mix/{lang}/{c}"]
    lines.append(f"{'total':<28}" + "".join(f"{total[c]:>14,}" for c in cols))
    return "\n".join(lines)


# What the training loop consumed (medtune.training.trained_mix counts it from the micro-batches it took), beside the
# planned mix above: `trained_mix/<language>[/<source spec>]/{examples,tokens}`, shares, and the passes over the mix.
TRAINED = "trained_mix"


def trained_rows(report: Mapping[str, Any]) -> list[tuple[str, str, list[float]]]:
    """(language, source spec or '', [planned rows, trained rows, planned tokens, trained tokens, planned share,
    trained share]) per language and source; shares in the mix's unit. [] when the report has no trained record."""
    if f"{TRAINED}/tokens" not in report:
        return []
    unit, total, out = report["data_mix/unit"], report[f"{TRAINED}/{report['data_mix/unit']}"], []
    for lang in report["data_mix/languages"].split(","):
        head = f"{TRAINED}/{lang}/"
        specs = [k[len(head) : -len("/examples")] for k in report if k.startswith(head) and k.endswith("/examples")]
        for spec in ["", *(s for s in specs if s)]:
            tail = f"{lang}/{spec}" if spec else lang
            cells = [report.get(f"data_mix/{tail}/examples", 0), report.get(f"{TRAINED}/{tail}/examples", 0)]
            cells += [report.get(f"data_mix/{tail}/tokens", 0), report.get(f"{TRAINED}/{tail}/tokens", 0)]
            trained = report.get(f"{TRAINED}/{tail}/{unit}", 0)
            cells += [report.get(f"data_mix/{tail}/share_{unit}", 0.0), trained / total if total else 0.0]
            out.append((lang, spec, cells))
    return out


TRAINED_HEADER = ("planned rows", "trained rows", "planned tokens", "trained tokens", "planned share", "trained share")


def format_trained(report: Mapping[str, Any]) -> str:
    """A console table of the trained record beside the planned mix (one pass over it), per language and source."""
    head = (
        f"trained mix by {report['data_mix/unit']}: {report[f'{TRAINED}/passes']:.3f} passes over the planned mix "
        f"({report[f'{TRAINED}/micro_batches']:,} of {report[f'{TRAINED}/micro_batches_per_pass']:,} micro-batches "
        "per pass)"
    )
    lines = [head, f"{'language / source':<28}" + "".join(f"{n:>16}" for n in TRAINED_HEADER)]
    for lang, spec, cells in trained_rows(report):
        label = f"  {spec}" if spec else lang
        lines.append(f"{label:<28}" + "".join(f"{c:>16,}" if isinstance(c, int) else f"{c:>16.4f}" for c in cells))
    return "\n".join(lines)


def trained_markdown(report: Mapping[str, Any]) -> list[str]:
    """The trained record as a markdown table (model card), or [] when the run recorded none."""
    rows = trained_rows(report)
    if not rows:
        return []
    lines = ["| language | source | " + " | ".join(TRAINED_HEADER) + " |", "|---|---|" + "---:|" * len(TRAINED_HEADER)]
    for lang, spec, cells in rows:
        shown = [f"{c:,}" if isinstance(c, int) else f"{c:.4f}" for c in cells]
        lines.append(f"| {lang} | {spec or 'all'} | " + " | ".join(shown) + " |")
    return lines
