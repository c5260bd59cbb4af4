"""Report over a sweep's run directories: tables, the 10:3-vs-reference contrast, plots, W&B publishing.

python -m medtune.report runs/multirun/<stamp>_mix_sweep [--reference 1:1] [--confidence 0.95] [--wandb]
"""
