"""`python -m medtune.bench --peers trl`: the peer trains on medtune's exact samples in its own process and its row
lands in the same results table (a tiny model on the CPU; the GPU comparison is experiments/results/efficiency_h200)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medtune.bench.run import main

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
