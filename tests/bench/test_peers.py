"""`python -m medtune.bench --peers trl`: the peer trains on medtune's exact samples in its own process and its row
lands in the same results table (a tiny model on the CPU; the GPU comparison is experiments/results/efficiency_h200)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.bench.cli import main

TINY = ["model=tiny_llama", "model.dtype=float32", "trainer.autocast_dtype=null", "packing.max_seq_len=256"]
TINY += ["quantization=none"]


@pytest.mark.timeout(600)
def test_trl_peer_runs_on_medtunes_samples(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "common: [trainer.grad_accum_steps=1, logger=none, eval=none, stage=train, trainer.progress_bar=false]\n"
        "baseline: mb4\nconfigurations:\n  mb4: [packing=packed, trainer.micro_batch_size=4]\n"
    )
    out = tmp_path / "out"
    main(["--config", str(plan), "--steps", "2", "--warmup", "1", "--out", str(out), "--peers", "trl", *TINY])
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["configurations"]}
    assert rows["mb4"]["status"] == "ok" and rows["mb4"]["first_step_s"] > 0
    peer = rows["peer:trl"]
    assert peer["status"] == "ok", peer.get("error")
    assert peer["steps"] == 3 and peer["useful_tokens_per_s"] > 0 and peer["mirrors"] == "mb4"
    assert peer["first_step_s"] <= peer["wall_to_last_step_s"]
    assert len(peer["step_times_s"]) == 2 and peer["slowest_step_s"] == max(peer["step_times_s"])
    assert len(rows["mb4"]["step_times_s"]) == 2 and rows["mb4"]["slowest_step_s"] == max(rows["mb4"]["step_times_s"])
    samples = [json.loads(x) for x in (out / "peers" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(len(s["input_ids"]) == len(s["labels"]) <= 256 for s in samples)
    assert "peer:trl" in (out / "results.md").read_text()


def test_unknown_peer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--peers", "axolotl", "--out", str(tmp_path)])


def test_the_peers_checkpoint_follows_the_model(tmp_path: Path) -> None:
    """A second bench into the same folder with another architecture must not hand the peers the first one."""
    from transformers import AutoConfig

    from medtune.bench.peers.launch import peer_inputs
    from medtune.config import compose
    from medtune.models.build import arch_config, load_tokenizer

    dirs = {}
    for arch in ("tiny_llama", "tiny_gemma3"):
        cfg = compose([f"model={arch}"])
        tokenizer = load_tokenizer(cfg.model, arch_config(cfg.model.arch, cfg.model.num_layers))
        dirs[arch] = peer_inputs(cfg, [{"input_ids": [1, 2], "labels": [1, 2]}], tokenizer, tmp_path)["model"]
    assert dirs["tiny_llama"] != dirs["tiny_gemma3"]
    assert AutoConfig.from_pretrained(dirs["tiny_gemma3"]).model_type.startswith("gemma3")
    assert AutoConfig.from_pretrained(dirs["tiny_llama"]).model_type == "llama"


@pytest.mark.timeout(120)
def test_a_peer_that_runs_out_of_time_fails_its_row_and_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """unsloth's first run compiles for minutes: past --peer-timeout-s its row fails (the bench goes on) and what it
    printed so far stays in its log; a peer that crashes fails its row with its last line."""
    import argparse

    from medtune.bench import peers
    from medtune.bench.peers.launch import run_peers
    from medtune.config import compose

    (tmp_path / "slow_peer.py").write_text("import time\nprint('compiling block 1 of 34', flush=True)\ntime.sleep(60)")
    (tmp_path / "bad_peer.py").write_text("raise SystemExit('no GPU for this peer')\n")
    monkeypatch.setitem(peers.PEERS, "slow", ("slow_peer", []))
    monkeypatch.setitem(peers.PEERS, "bad", ("bad_peer", []))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    inputs = {"samples": tmp_path / "samples.jsonl", "model": model_dir}
    args = argparse.Namespace(warmup=1, steps=1, peer_timeout_s=3.0)
    envs = {"slow": str(tmp_path), "bad": str(tmp_path)}
    slow, bad = run_peers(["slow", "bad"], inputs, compose(["model=tiny_llama"]), args, envs)
    assert slow["status"] == "failed" and "--peer-timeout-s=3 s" in slow["error"] and slow["wall_s"] < 30
    assert "compiling block 1 of 34" in (tmp_path / "slow.log").read_text()
    assert bad["status"] == "failed" and "exit 1: no GPU for this peer" in bad["error"]


def test_a_slow_step_is_kept_beside_the_mean() -> None:
    """The peer's step clock: each timed step's time, which sum to the timed window, and the slowest of them (unsloth's
    4-row run on the H200 averaged 0.995 s per step, one of them ~6 s, the others ~0.45 s by its progress bar)."""
    from medtune.bench.peers.common import StepClock

    clock = StepClock()
    clock.loaded_at = 100.0
    for end in (150.0, 150.5, 151.0, 151.4, 157.4, 157.8):  # warm-up x 2, then a recompile in the timed steps
        clock.add_tokens(8000)
        clock.ends.append(end)
        clock.tokens.append(clock._pending)
        clock._pending = 0
    out = clock.result(2, {})
    assert out["step_times_s"] == pytest.approx([0.5, 0.4, 6.0, 0.4])
    assert sum(out["step_times_s"]) == pytest.approx(out["step_s"] * 4)
    assert out["slowest_step_s"] == pytest.approx(6.0) and out["first_step_s"] == pytest.approx(50.0)
