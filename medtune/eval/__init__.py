"""Evaluation on local medical tasks through lm-eval: tasks, scoring, statistics, forgetting, sanity, the base cache.

Entry point: `medtune.eval.evaluation.evaluate(model, tokenizer, eval_cfg, data_cfg, run_dir, label)` and
`python -m medtune.evaluate`. Modules: tasks (lm-eval task files from prepared records), scoring (lm-eval on an
in-memory model -> one prediction row per question), continuation (the lm-eval model class that projects only answer
positions), ranks (questions spread over torchrun ranks), base_cache (the base model's scores, shared by a sweep),
summary (per task / language accuracy with intervals), stats (Wilson, bootstrap, McNemar), forgetting (paired
deltas between two models), sanity (broken-eval checks), adapter_check (the adapter-active check).
"""
