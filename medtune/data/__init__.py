"""Data: one Record schema for every source, prepared parquet splits, leakage guard, prompts and labels.

    python -m medtune.data prepare                 # every source under $MEDTUNE_DATA_DIR -> $MEDTUNE_CACHE_DIR/data
    python -m medtune.data prepare --sources kormedmcqa mmlu

In code: `load_records("kormedmcqa", "train", data_cfg)` (views: kormedmcqa_<subject>, mmlu_medical, mmlu_general,
mmlu_<subject>), `format_prompt(record)` and `encode_example(record, tokenizer, data_cfg)`.
"""

from medtune.data.loading import assert_trainable, eval_split_specs, is_eval_split, load_records
from medtune.data.prepare import prepare
from medtune.data.prompts import IGNORE_INDEX, encode_example, format_prompt, render_mcq_prompt, render_target
from medtune.data.schema import LETTERS, BadRowError, Record
from medtune.data.sources.registry import SOURCES, VIEW_SUBJECTS, parse_spec

__all__ = [
    "IGNORE_INDEX",
    "LETTERS",
    "SOURCES",
    "VIEW_SUBJECTS",
    "BadRowError",
    "Record",
    "assert_trainable",
    "encode_example",
    "eval_split_specs",
    "format_prompt",
    "is_eval_split",
    "load_records",
    "parse_spec",
    "prepare",
    "render_mcq_prompt",
    "render_target",
]
