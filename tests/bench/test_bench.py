"""The efficiency benchmark end to end on the CPU with a tiny model, and its arithmetic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from medtune.bench.cli import main
from medtune.bench.lengths import LENGTHS_JSON, length_histogram, sample_lengths
from medtune.bench.plan import compose_config, isolate, run_order
from medtune.bench.run import add_ratios, format_table, synthetic_examples

PAIRS = [(40, 10), (12, 3), (90, 30), (25, 25), (7, 2)] * 4


def test_committed_histogram_is_consistent() -> None:
    hist = json.loads(LENGTHS_JSON.read_text())
    assert sum(c for _, _, c in hist["joint"]) == hist["n_examples"]
    assert sum(hist["total_len_hist"].values()) == hist["n_examples"]
    assert all(label <= total for total, label, _ in hist["joint"])
    assert hist["total_tokens"] == sum(t * c for t, _, c in hist["joint"])


def test_samples_follow_histogram_and_are_clipped() -> None:
    hist = length_histogram(PAIRS, {})
    drawn = sample_lengths(hist, 500, max_seq_len=32, seed=1)
    assert drawn == sample_lengths(hist, 500, max_seq_len=32, seed=1)
    assert {t for t, _ in drawn} == {32, 12, 25, 7}  # 40 and 90 clipped to the row length
    assert all(1 <= label <= total - 1 for total, label in drawn)
    examples = synthetic_examples(hist, 50, vocab=512, max_seq_len=32, seed=0)
    for ex in examples:
        n_label = sum(x != -100 for x in ex["labels"])
        assert ex["labels"][-n_label:] == ex["input_ids"][-n_label:] and max(ex["input_ids"]) < 512


def test_ratios_come_from_the_measured_numbers() -> None:
    rows = [
        {"name": "base", "status": "ok", "peak_alloc_gib": 30.0, "predicted_gib": 27.0, "useful_tokens_per_s": 900.0},
        {"name": "fast", "status": "ok", "peak_alloc_gib": 12.0, "predicted_gib": 13.2, "useful_tokens_per_s": 8100.0},
        {"name": "oom", "status": "failed", "error": "OutOfMemoryError"},
    ]
    add_ratios(rows, "base")
    assert rows[1]["memory_ratio"] == pytest.approx(0.4) and rows[1]["speed_ratio"] == pytest.approx(9.0)
    assert rows[0]["error_pct"] == pytest.approx(-10.0) and rows[1]["error_pct"] == pytest.approx(10.0)
    for row in rows[:2]:
        row.update({"peak_reserved_gib": 1.0, "mfu": 0.5, "first_step_s": 41.04, "wall_to_last_step_s": 95.55})
    rows[0]["process_to_first_step_s"] = 52.26  # only the process's first configuration has it
    rows[1]["slowest_step_s"] = 6.004  # one slow timed step (a peer's recompile) is shown beside the mean rate
    table = format_table(rows, "base")
    rows[1].update({"micro_batch_size": 8, "mfu_nemo": 0.375, "plan": {"checkpointed_layers": 34, "layers": 34,
                                                                     "offload_activations": True}})  # fmt: skip
    table = format_table(rows, "base")
    base = "| base | n/a | n/a | 30.00 | 1.00 | 27.00 | -10.0 | 900 | n/a | 50.0% | n/a | 41.0 | 52.3 | 95.5 | 1.00x "
    fast = "| fast | 8 | 34/34 + offload | 12.00 | 1.00 | 13.20 | +10.0 | 8,100 | 6.00 | 50.0% | 37.5% | 41.0 | n/a "
    assert base + "| 1.00x |" in table and fast + "| 95.5 | 0.40x | 9.00x |" in table
    assert "failed: OutOfMemoryError" in table


def _bench_on_cpu(tmp_path: Path, configurations: str, steps: int) -> tuple[dict, Path]:
    """python -m medtune.bench on tiny Gemma 3 with the plan's `configurations:` block; results.json and --out."""
    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps(length_histogram(PAIRS, {})))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "common: [model=tiny_gemma3, trainer.micro_batch_size=2, trainer.autocast_dtype=null, logger=none, eval=none,"
        " trainer.progress_bar=false, trainer.device=cpu]\n" + configurations
    )
    out = tmp_path / "out"
    main(["--config", str(plan), "--lengths", str(lengths), "--steps", str(steps), "--warmup", "1", "--out", str(out),
          "packing.max_seq_len=48"])  # fmt: skip
    return json.loads((out / "results.json").read_text()), out


def test_bench_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    plan = "baseline: pad\nconfigurations:\n  pad: [packing=pad_to_max]\n  packed: [packing=packed]\n"
    results, out = _bench_on_cpu(tmp_path, plan, steps=2)
    assert results["device"] == "cpu" and results["versions"]["torch"] and results["command"]
    pad, packed = results["configurations"]
    assert pad["status"] == "ok" and packed["status"] == "ok", (pad.get("error"), packed.get("error"))
    assert packed["speed_ratio"] == pytest.approx(packed["useful_tokens_per_s"] / pad["useful_tokens_per_s"])
    assert pad["useful_tokens_per_s"] < pad["padded_tokens_per_s"]  # rows of 48 hold samples of 7-40 tokens
    assert packed["predicted_gib"] > 0 and pad["speed_ratio"] == 1.0
    # the first configuration's first step is also timed from the process's start, which came before the model load
    assert pad["process_to_first_step_s"] > pad["first_step_s"] and "process_to_first_step_s" not in packed
    assert f"{packed['speed_ratio']:.2f}x" in (out / "results.md").read_text()


def test_plans_that_patch_kernels_run_each_configuration_in_its_own_process(tmp_path: Path) -> None:
    """Liger patches transformers for the whole process, so a plan that mixes it runs one process per configuration
    (each first step also timed from its own process's start); a configuration that fails there is a failed row."""
    results, out = _bench_on_cpu(tmp_path, "configurations:\n  liger: [trainer.kernels=liger]\n  plain: []\n", 1)
    assert results["isolated"] is True
    liger, plain = results["configurations"]
    assert liger["status"] == "failed" and "liger" in liger["error"] and "bench.log" in liger["error"]  # no Triton here
    assert plain["status"] == "ok" and plain["process_to_first_step_s"] > plain["first_step_s"] > 0
    for name in ("liger", "plain"):
        assert (out / "runs" / name / "plan.yaml").is_file() and (out / "runs" / name / "bench.log").is_file()
    assert json.loads((out / "runs" / "plain" / "results.json").read_text())["isolated"] is False


def test_isolation_choice_and_one_process_order() -> None:
    args = argparse.Namespace(warmup=1, steps=1)
    configurations = {"fused": ["trainer.kernels=liger"], "plain": [], "compiled": ["trainer.compile=true"]}
    plan = {"common": ["model=tiny_llama", "trainer.device=cpu"], "configurations": configurations}
    cfgs = {name: compose_config(plan, name, [], args, 1)[0] for name in plan["configurations"]}
    assert isolate("auto", cfgs, 1) and isolate("always", cfgs, 1)
    assert not isolate("never", cfgs, 1) and not isolate("auto", cfgs, 2)  # under torchrun: ordered instead
    assert not isolate("auto", {n: cfgs[n] for n in ("plain", "compiled")}, 1)  # nothing patches the process
    with pytest.raises(ValueError, match="torchrun"):
        isolate("always", cfgs, 2)
    assert run_order(cfgs) == ["plain", "compiled", "fused"]  # Liger's patch comes after the others


@pytest.mark.timeout(60)
def test_a_run_past_its_time_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """run_bounded (isolated configurations and peers): None after the limit, and the child's own children (compile
    workers) die with it; a run that ends gives its exit status."""
    import os
    import sys
    import time

    from medtune.bench.plan import run_bounded

    spawn = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    spawn += " print(p.pid, flush=True); time.sleep(60)"
    log = tmp_path / "log"
    with log.open("w") as f:
        started = time.monotonic()
        assert run_bounded([sys.executable, "-c", spawn], dict(os.environ), f, 3.0) is None
    assert time.monotonic() - started < 30
    worker = int(log.read_text().split()[0])
    time.sleep(0.5)
    status = Path(f"/proc/{worker}/status")
    state = status.read_text().split("State:")[1].split()[0] if status.exists() else "gone"
    assert state in ("gone", "Z"), state  # killed (a zombie until something reaps it), not sleeping on
    with log.open("w") as f:
        assert run_bounded([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), f, 30.0) == 3
