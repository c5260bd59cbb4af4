"""Evaluation on local medical tasks through lm-eval: task generation, scoring, statistics, forgetting, sanity.

Entry point: `medtune.evaluate.evaluate(model, tokenizer, eval_cfg, data_cfg, run_dir, label)` and
`python -m medtune.evaluate`. Modules: tasks (lm-eval task files from prepared records), runner (lm-eval on an
in-memory model -> one prediction row per question), summary (per task / language accuracy with intervals),
stats (Wilson, bootstrap, McNemar), forgetting (paired deltas between two models), sanity (broken-eval checks),
adapter (the adapter-active check).
"""
