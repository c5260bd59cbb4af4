"""`python -m medtune.evaluate` under 2-rank FSDP (gloo, CPU): one decoder layer filled and sharded at a time
(sharding.load=per_layer, the default), the adapter's tensors filled into the meta LoRA modules per layer, scores the
questions exactly as sharding.load=whole and as one process. Every launch has a subprocess timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fixtures.export_run import make_run


def _evaluate(nproc: int, run_dir: Path, cache: Path, *overrides: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    cmd = [*(launcher or [sys.executable]), "-m", "medtune.evaluate", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "MEDTUNE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _predictions(eval_dir: Path, label: str) -> dict[tuple[str, str], dict]:
    lines = (eval_dir / label / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return {(r["task"], r["id"]): r for r in map(json.loads, lines)}


@pytest.mark.timeout(1500)
def test_per_layer_evaluate_of_an_adapter_scores_like_whole_and_one_process(tmp_path: Path) -> None:
    """5 questions per task (odd: the ranks' shares differ); the adapter and the base (adapter disabled) scored."""
    adapter = make_run(tmp_path, "tiny_llama") / "adapter"  # its base: model.arch below, seed 0, float32
    model = [f"model.arch={tmp_path / 'tiny_llama.json'}", "model.attn_implementation=eager", "seed=0"]
    common = ["model=tiny_llama", *model, "trainer.device=cpu", "eval=demo", "eval.limit=5", "eval.cache_base=false",
              f"eval.adapter={adapter}", "logger=jsonl"]  # fmt: skip
    fsdp = ["sharding=fsdp", "sharding.param_dtype=float32"]
    runs = {
        "one": _evaluate(1, tmp_path / "one", tmp_path / "cache", *common),
        "whole": _evaluate(2, tmp_path / "whole", tmp_path / "cache", *common, *fsdp, "sharding.load=whole"),
        "per_layer": _evaluate(2, tmp_path / "per_layer", tmp_path / "cache", *common, *fsdp),
    }
    logs = {name: proc.stdout + proc.stderr for name, proc in runs.items()}
    # per_layer never builds the whole model (build_model's line), whole does; both ranks log the per-layer fill
    assert logs["per_layer"].count("sharding.load=per_layer: 2 decoder layers filled (random, seed 0)") == 2
    assert "built tiny_llama" not in logs["per_layer"] and "built tiny_llama" in logs["whole"]
    assert "adapter active" in logs["per_layer"]
    for label in ("adapter", "base"):
        ref = _predictions(tmp_path / "one" / "eval", label)
        assert len(ref) == 10
        for name in ("whole", "per_layer"):
            ours = _predictions(tmp_path / name / "eval", label)
            assert ours.keys() == ref.keys(), (name, label)
            for key, row in ref.items():
                assert ours[key]["pred"] == row["pred"], (name, label, key)
                assert ours[key]["choice_lls"] == pytest.approx(row["choice_lls"], abs=1e-4), (name, label, key)
    metrics = {name: json.loads((tmp_path / name / "eval" / "metrics.json").read_text()) for name in runs}
    for key in ("eval/lang/ko/acc", "eval/lang/en/acc", "base/eval/lang/ko/acc", "forgetting/en/delta_pp"):
        assert metrics["per_layer"][key] == pytest.approx(metrics["one"][key]) == metrics["whole"][key], key
