"""What a run trained: the rows and tokens of each language and source in the micro-batches the loop took.

    record = trained_record(pipeline, position, report)   # trained_mix/... keys, beside the planned data_mix/...

The planned mix (`data_mix/...`) is one pass over the selected rows; a run of `trainer.max_steps` may take less
(4 of 7 micro-batches) or more (passes repeat it). The data position `{"epoch": e, "batch": b}` says exactly which
micro-batches of the global stream were consumed (every rank's, in order), so the record is counted from it: e whole
passes plus the first b micro-batches of pass e. A row counts once per pass it appears in (also when it was split
into several pieces), its tokens as the pieces that were trained (after packing.truncate).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from medtune.data.mix_report import TRAINED, format_trained

log = logging.getLogger("medtune.data")


def batch_counts(batches: Sequence[dict[str, torch.Tensor]], specs: Sequence[str]) -> Counter:
    """{(spec, 'examples' | 'tokens'): n} over `batches`, a row counted once however many pieces it has."""
    counts: Counter = Counter()
    seen: set[int] = set()
    for batch in batches:
        examples = batch["example_index"].tolist()  # one entry per document, rows in order, documents in order
        k = 0
        for row in batch["document_ids"]:
            lengths = torch.bincount(row[row >= 0]).tolist()
            for length in lengths:
                counts[(specs[examples[k]], "tokens")] += length
                seen.add(examples[k])
                k += 1
    for index in seen:
        counts[(specs[index], "examples")] += 1
    return counts


def trained_record(pipeline: Any, position: dict[str, int], report: dict[str, Any]) -> dict[str, Any]:
    """The trained_mix/... keys of a run whose loop stopped at `position` (a medtune.training.batches.DataPipeline):
    its whole passes from the counts of one pass, the pass in progress from its first micro-batches."""
    per_pass = report["data/micro_batches_per_epoch"]
    counts: Counter = Counter({key: n * position["epoch"] for key, n in pipeline.pass_counts.items()})
    if position["batch"]:
        counts.update(batch_counts(pipeline.all_batches(position["epoch"])[: position["batch"]], pipeline.train_specs))
    out: dict[str, Any] = {
        f"{TRAINED}/micro_batches": position["epoch"] * per_pass + position["batch"],
        f"{TRAINED}/micro_batches_per_pass": per_pass,
        f"{TRAINED}/passes": position["epoch"] + position["batch"] / per_pass,
    }
    langs = report["data_mix/languages"].split(",")
    for what in ("examples", "tokens"):
        out[f"{TRAINED}/{what}"] = sum(n for (_, kind), n in counts.items() if kind == what)
        for lang in langs:
            out[f"{TRAINED}/{lang}/{what}"] = 0
        for key in report:  # every source of the plan, trained or not
            if key.startswith("data_mix/") and key.endswith("/requested_share") and key.count("/") == 3:
                spec = key[len("data_mix/") : -len("/requested_share")]
                out[f"{TRAINED}/{spec}/{what}"] = counts[(spec, what)]
                out[f"{TRAINED}/{spec.split('/')[0]}/{what}"] += counts[(spec, what)]
        for lang in langs:
            total = out[f"{TRAINED}/{what}"]
            out[f"{TRAINED}/{lang}/share_{what}"] = out[f"{TRAINED}/{lang}/{what}"] / total if total else 0.0
    return out


def log_trained(record: dict[str, Any], report: dict[str, Any], weights: dict[str, float], max_steps: int) -> None:
    """The trained mix beside the planned one; a WARNING for less than one pass and for a weighted language left
    without a trained row."""
    both = {**report, **record}
    log.info("%s", format_trained(both))
    passes, taken, per_pass = (record[f"{TRAINED}/{k}"] for k in ("passes", "micro_batches", "micro_batches_per_pass"))
    if passes < 1.0 - 1e-9:
        unit = report["data_mix/unit"]
        shares = ", ".join(f"{lang} {record[f'{TRAINED}/{lang}/share_{unit}']:.3f}" for lang in weights)
        planned = ", ".join(f"{lang} {report[f'data_mix/{lang}/share_{unit}']:.3f}" for lang in weights)
        log.warning(
            "the run trained %d of the %d micro-batches of one pass over its mix (%.3f passes): the trained shares of "
            "%s are %s, not the planned %s; the planned counts (data_mix/...) are not what was trained. Set "
            "trainer.max_steps so that the run makes one pass (the start of the run names that number)",
            taken,
            per_pass,
            passes,
            unit,
            shares,
            planned,
        )
    empty = [lang for lang, weight in weights.items() if weight > 0 and record[f"{TRAINED}/{lang}/examples"] == 0]
    if empty:
        log.warning(
            "the run trained no row of %s although the mix weights %s (trainer.max_steps=%d, %.3f passes); raise "
            "trainer.max_steps or the language's weight",
            ", ".join(empty),
            "it" if len(empty) == 1 else "them",
            max_steps,
            passes,
        )
