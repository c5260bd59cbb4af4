"""Mix training sources by language in an exact, reproducible ratio (README, "Data mix").

What a ratio means: `data_mix.weights` (or `ratio: "10:3"`, English first) give each language's share of the *unit*
(`examples` or `tokens`) in the training set; inside a language the per-source weights split its share the same way.
`budget` is the total in that unit; `budget: null` takes the largest total at which every weighted source can still
give its share (counting `max_repeat` passes when `upsample` is on).

How rows are chosen: each source is ordered by a keyed hash of (seed, source spec, row id), so the order depends
neither on the pool's order nor on the process; the same seed and data give the same ids, another seed others.
Positions 0, 1/f, 2/f, ... of that order (f = heldout_frac) are held out for the eval-loss pass; training takes the
other rows front to back until the source's target is reached, whole examples only. Targets are cumulative inside a
language, so each language ends within one example (tokens: one example's tokens) of its exact share. Upsampling
repeats whole passes over a source's training rows. `source_weighting: proportional` splits a language's share by
source size instead of by the given weights.

The trainer calls `build_mix(cfg.data_mix, pools, length_fn)` and prints `format_mix_report(result.report)`;
tests/data/test_mix.py shows small pools end to end; the report's keys and table are in mix_report.py.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from medtune.config import ConfigError, DataMixConfig
from medtune.data.mix_report import mix_report

logger = logging.getLogger(__name__)

Row = Any  # a medtune.data.schema.Record; build_mix reads only `.id` and `.language` (and passes it to length_fn)


@dataclass
class MixResult:
    """The training rows (repeats included, in a seeded order), the held-out rows, and the flat report."""

    train: list[Row]
    heldout: list[Row]
    report: dict[str, Any]
    train_specs: list[str] = field(default_factory=list)  # "<language>/<source spec>" of each training row


@dataclass
class SourceDraw:
    """One source: its rows in seeded order, which positions are held out, and what the selection took."""

    lang: str
    spec: str
    share: Fraction  # of the whole training set
    rows: list[Row]
    tokens: list[int]
    held: list[bool]
    units: list[int]  # per position, in data_mix.unit
    one_pass: int = 0  # units in one pass over the training positions
    capacity: int = 0  # the most units it may give: one pass, or max_repeat passes when upsampling
    picks: list[int] = field(default_factory=list)  # positions taken for training, repeats included
    consumed: int = 0  # prefix of the order walked through; its held-out positions form the held-out set


def _exact(x: float | int) -> Fraction:
    # via str so that 0.02 is 1/50, not the nearest binary float
    return Fraction(str(x))


def _order_key(seed: int, spec: str, row_id: str) -> bytes:
    # keyed hash, not Python's hash(): stable across processes, platforms and the order rows were loaded in
    return hashlib.blake2b(f"{seed}\x00{spec}\x00{row_id}".encode(), digest_size=16).digest()


def _prepare(cfg: DataMixConfig, pools: Mapping[str, Mapping[str, Sequence[Row]]], length_fn: Callable) -> list:
    frac = _exact(cfg.heldout_frac)
    sources = []
    for lang in cfg.languages():
        for spec, weight in cfg.sources.get(lang, {}).items():
            rows = pools.get(lang, {}).get(spec)
            if rows is None and weight > 0 and cfg.weights.get(lang, 0) > 0:
                raise ConfigError(
                    f"data_mix.sources.{lang} lists {spec!r} but no records were loaded for it (pools[{lang!r}] has "
                    f"{sorted(pools.get(lang, {}))}); check the spec '<source>:<split>' or give it weight 0."
                )
            rows = sorted(rows or [], key=lambda r, spec=spec: _order_key(cfg.seed, spec, r.id))
            _check_rows(lang, spec, rows)
            tokens = [_length(length_fn, r) for r in rows]
            held = [math.ceil((i + 1) * frac) > math.ceil(i * frac) for i in range(len(rows))]
            units = tokens if cfg.unit == "tokens" else [1] * len(rows)
            one_pass = sum(u for u, h in zip(units, held, strict=True) if not h)
            capacity = math.floor(one_pass * _exact(cfg.max_repeat)) if cfg.upsample else one_pass
            sources.append(SourceDraw(lang, spec, Fraction(0), rows, tokens, held, units, one_pass, capacity))
    _assign_shares(cfg, sources)
    return sources


def _assign_shares(cfg: DataMixConfig, sources: list[SourceDraw]) -> None:
    """Each source's exact share of the training set: its language's share, split by the source weights."""
    total = sum(_exact(w) for w in cfg.weights.values())
    for lang in cfg.languages():
        group = [src for src in sources if src.lang == lang]
        weights = [_exact(cfg.sources[lang][src.spec]) for src in group]
        sizes = [Fraction(src.one_pass) if w > 0 else Fraction(0) for w, src in zip(weights, group, strict=True)]
        if cfg.source_weighting == "proportional" and any(sizes):  # all empty: keep weights, so the error names them
            weights = sizes
        for src, weight in zip(group, weights, strict=True):
            src.share = _exact(cfg.weights.get(lang, 0)) / total * weight / sum(weights) if weight else Fraction(0)


def _check_rows(lang: str, spec: str, rows: list[Row]) -> None:
    dupes = [i for i, n in Counter(r.id for r in rows).items() if n > 1]
    if dupes:
        raise ConfigError(f"pools[{lang!r}][{spec!r}] repeats ids {dupes[:3]}; record ids must be unique.")
    wrong = [r.id for r in rows if r.language != lang]
    if wrong:
        raise ConfigError(
            f"data_mix.sources.{lang} lists {spec!r} but its record {wrong[0]!r} has language "
            f"{next(r.language for r in rows if r.id == wrong[0])!r}; move the source to that language."
        )


def _length(length_fn: Callable[[Row], int], row: Row) -> int:
    n = int(length_fn(row))
    if n < 1:
        raise ValueError(f"length_fn gave {n} tokens for record {row.id!r}; every record needs at least 1 token.")
    return n


def language_targets(cfg: DataMixConfig, sources: list[SourceDraw], budget: int) -> dict[str, Fraction]:
    """Each language's exact share of the budget; in examples, whole numbers summing to the budget."""
    exact: dict[str, Fraction] = {}
    for src in sources:
        exact[src.lang] = exact.get(src.lang, Fraction(0)) + budget * src.share
    if cfg.unit == "tokens":
        return exact
    # largest remainder: each language within one example of its exact share, and the total is the budget
    whole = {lang: Fraction(math.floor(x)) for lang, x in exact.items()}
    left = budget - int(sum(whole.values()))
    by_remainder = sorted(exact, key=lambda lang: whole[lang] - exact[lang])  # stable: ties keep config order
    for lang in by_remainder[:left]:
        whole[lang] += 1
    return whole


def _quotas(cfg: DataMixConfig, sources: list[SourceDraw], budget: int) -> list[int]:
    """Per source, the running target inside its language (rounded up) minus the previous one: what it must give."""
    targets = language_targets(cfg, sources, budget)
    quotas, running, lang_share, previous = [], Fraction(0), {}, {}
    for src in sources:
        lang_share[src.lang] = lang_share.get(src.lang, Fraction(0)) + src.share
    for src in sources:
        if src.lang not in previous:
            running, previous[src.lang] = Fraction(0), 0
        running += src.share
        share = lang_share[src.lang]
        cumulative = math.ceil(targets[src.lang] * running / share) if share else 0
        quotas.append(cumulative - previous[src.lang])
        previous[src.lang] = cumulative
    return quotas


def _max_budget(cfg: DataMixConfig, sources: list[SourceDraw]) -> int:
    """The largest budget at which every source meets its quota."""
    weighted = [src for src in sources if src.share > 0]
    budget = min(math.floor(src.capacity / src.share) for src in weighted)
    # rounding to whole examples can ask one more row of a source than fits at the exact limit: step down
    while budget > 0 and _shortfalls(cfg, sources, budget):
        budget -= 1
    return budget


def _shortfalls(cfg: DataMixConfig, sources: list[SourceDraw], budget: int) -> list[tuple[int, SourceDraw]]:
    return [(q, s) for q, s in zip(_quotas(cfg, sources, budget), sources, strict=True) if q > s.capacity]


def _check_feasible(cfg: DataMixConfig, sources: list[SourceDraw], budget: int) -> None:
    short = _shortfalls(cfg, sources, budget)
    if not short:
        return
    ratio = ":".join(f"{w:g}" for w in cfg.weights.values())
    lines = []
    for quota, src in short:
        n_held = sum(src.held)
        have = f"only {src.one_pass:,} exist ({len(src.rows):,} rows, {n_held:,} held out for eval loss)"
        if cfg.upsample:
            have += f", {src.capacity:,} with data_mix.max_repeat={cfg.max_repeat:g}"
        lines.append(f"{src.lang} needs {quota:,} {cfg.unit} from {src.spec} at {ratio} with budget {budget:,}; {have}")
    fix = "raise data_mix.max_repeat" if cfg.upsample else "allow upsampling (data_mix.upsample=true)"
    raise ConfigError(
        "; ".join(lines) + f"; {fix} or lower data_mix.budget (at most {_max_budget(cfg, sources):,} fits)."
    )


def _walk(src: SourceDraw, need: int, upsample: bool) -> int:
    """Take training positions in order (again from the start when upsampling) until `need` units; return them."""
    if need <= 0:  # nothing asked (a zero weight, or an earlier source's last row already covered it)
        return 0
    order = [i for i, held in enumerate(src.held) if not held]
    taken, steps = 0, 0
    while taken < need:
        if steps == len(order) and not upsample:
            raise RuntimeError(f"data_mix: {src.spec} ran out of rows after the feasibility check (a bug).")
        pos = order[steps % len(order)]
        src.picks.append(pos)
        taken += src.units[pos]
        steps += 1
    src.consumed = len(src.rows) if steps >= len(order) else order[steps - 1] + 1
    return taken


def build_mix(
    cfg: DataMixConfig, pools: Mapping[str, Mapping[str, Sequence[Row]]], length_fn: Callable[[Row], int]
) -> MixResult:
    """Select the training and held-out rows that realise cfg's ratio and budget; raise ConfigError if impossible."""
    if not cfg.sources:
        raise ConfigError("data_mix.sources is empty; choose a data_mix preset (e.g. data_mix=medical).")
    sources = _prepare(cfg, pools, length_fn)
    budget = cfg.budget if cfg.budget is not None else _max_budget(cfg, sources)
    if budget <= 0:
        empty = [s.spec for s in sources if s.share > 0 and s.capacity == 0]
        raise ConfigError(
            f"data_mix: nothing can be selected; these weighted sources have no training rows: {empty}; load rows "
            "for them, give them weight 0, or set data_mix.budget."
        )
    _check_feasible(cfg, sources, budget)
    target: dict[str, int] = {}  # running target per language
    taken: dict[str, int] = {}  # units taken so far per language: one source's overshoot is taken off the next
    for quota, src in zip(_quotas(cfg, sources, budget), sources, strict=True):
        target[src.lang] = target.get(src.lang, 0) + quota
        taken[src.lang] = taken.get(src.lang, 0) + _walk(src, target[src.lang] - taken.get(src.lang, 0), cfg.upsample)
    train, specs = _seeded_order(cfg.seed, sources)
    heldout = [src.rows[i] for src in sources for i in range(src.consumed) if src.held[i]]
    report = mix_report(cfg, sources, budget, language_targets(cfg, sources, budget))
    logger.info(
        "data mix: %s requested, %s achieved in %s; %d training rows, %d held out",
        report["data_mix/requested_ratio"],
        report["data_mix/achieved_ratio"],
        cfg.unit,
        len(train),
        len(heldout),
    )
    _warn_empty_languages(cfg, report, budget)
    return MixResult(train, heldout, report, specs)


def _warn_empty_languages(cfg: DataMixConfig, report: dict[str, Any], budget: int) -> None:
    """A language the ratio weights that gets no row (its share is below one example): said, not only counted."""
    for lang in cfg.languages():
        if cfg.weights.get(lang, 0) > 0 and report[f"data_mix/{lang}/examples"] == 0:
            said = f"data_mix.ratio={cfg.ratio!r}" if cfg.ratio is not None else f"data_mix.weights.{lang}"
            logger.warning(
                "data mix: %s gets no training rows: its share at %s is %.1f %s of the budget %s, less than one "
                "example; raise its weight or data_mix.budget",
                lang,
                said,
                budget * report[f"data_mix/{lang}/requested_share"],
                cfg.unit,
                f"{budget:,}",
            )


def _seeded_order(seed: int, sources: list[SourceDraw]) -> tuple[list[Row], list[str]]:
    # interleave languages and sources so that any prefix of the list has the mix, whatever the consumer does
    keyed = []
    for src in sources:
        copies: Counter = Counter()
        for pos in src.picks:
            row = src.rows[pos]
            keyed.append((_order_key(seed, f"train\x00{copies[pos]}", row.id), row, f"{src.lang}/{src.spec}"))
            copies[pos] += 1
    keyed.sort(key=lambda entry: entry[0])
    return [row for _, row, _ in keyed], [spec for _, _, spec in keyed]
