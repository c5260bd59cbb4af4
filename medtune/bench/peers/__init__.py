"""Peers in the benchmark: the same samples, architecture, rows, LoRA and nf4 base, trained by another framework.

Each peer is a script run in its own process (and, where its pins demand it, its own environment: `--peer-env
unsloth=/path/to/site-packages`), started by `python -m medtune.bench --peers trl,trl_liger,unsloth`. It reads the
samples medtune trained on (JSON Lines of input_ids and labels), loads the same random-weight checkpoint with nf4
quantisation at load time, trains `--steps` optimizer steps and writes one JSON of measurements (`common.py`):
steady-state useful tokens/s, time to the first step, wall time to the last step, peak memory, and whether packed
samples are kept apart.
"""

PEERS = {
    "trl": ("medtune.bench.peers.trl_peer", []),
    "trl_liger": ("medtune.bench.peers.trl_peer", ["--liger"]),
    "unsloth": ("medtune.bench.peers.unsloth_peer", []),
}
