"""The watch inside training: its series at the watched steps equal a direct computation of the change from base,
the guard stops (or marks) a run that forgets and stays quiet on one that does not move, and keep=best saves the
adapter of the step it names."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_model
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from medtune.config import register_configs, to_train_config
from medtune.eval.ranks import Ranks
from medtune.eval.watch import WatchSet
from medtune.models.anatomy import causal_lm_of, decoder_layers
from medtune.runtime.process_group import DistInfo
from medtune.runtime.shards import scoring_view, unwrap
from medtune.training import watch as watch_module
from medtune.training.recipe import TrainRecipe
from medtune.training.run import run
from medtune.training.speed import apply_speedups

CONF = REPO / "medtune" / "conf"
register_configs()
TINY = ["model=tiny_llama", "trainer.device=cpu", "trainer.progress_bar=false", "packing.max_seq_len=1024"]
WATCH = [
    "eval=none",
    "trainer.log_every=1",
    "eval.watch=[sample_ko,sample_en]",
    "eval.watch_limit=6",
    "logger=jsonl",
    "lora.dropout=0",
]


def _compose(tmp_path: Path, *overrides: str) -> Any:
    extra = [f"eval.cache_dir={tmp_path / 'eval_cache'}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=[*TINY, *WATCH, *extra, *overrides])


def _run(tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run through training.run; its summary.json and metrics.jsonl lines."""
    dict_cfg = _compose(tmp_path, *overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run(to_train_config(dict_cfg), dict_cfg, run_dir, multirun=False)
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "summary.json").read_text()), lines


def _direct_gold_ll(model: torch.nn.Module, prompts: list, options: list, golds: list) -> np.ndarray:
    """Log-probability of each gold letter from a plain full-vocabulary forward."""
    out = []
    for prompt, opts, gold in zip(prompts, options, golds, strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        out.append(float(torch.log_softmax(logits, -1)[opts[gold]]))
    return np.array(out)


class CheckingTracker:
    """Records every log call; at a watched step, recomputes each set's change from base from the model itself."""

    def __init__(self) -> None:
        self.recipe: TrainRecipe | None = None
        self.steps: list[int] = []
        self.logged: dict[int, dict[str, float]] = {}
        self.checked: dict[tuple[int, str], tuple[float, float]] = {}

    def log(self, metrics: dict[str, float], step: int) -> None:
        if "watch/step" not in metrics:
            return
        self.steps.append(step)
        self.logged[step] = metrics
        model = unwrap(self.recipe.model).eval()
        for s in self.recipe.watch.sets:
            args = (s.prompts, s.options, s.golds)
            run = _direct_gold_ll(model, *args)
            with model.disable_adapter():
                base = _direct_gold_ll(model, *args)
            self.checked[(step, s.name)] = (metrics[f"watch/{s.name}/delta_gold_ll"], float((run - base).mean()))
        model.train()


def test_series_are_logged_at_the_watched_steps_with_the_base_deltas(tmp_path: Path) -> None:
    cfg = to_train_config(_compose(tmp_path, "trainer.max_steps=5", "eval.watch_every=2", "optim.lr=1e-2"))
    tracker = CheckingTracker()
    recipe = TrainRecipe(cfg, tmp_path / "run", tracker, DistInfo(0, 1, 0, torch.device("cpu")))
    tracker.recipe = recipe
    recipe.setup()
    out = recipe.train()
    assert tracker.steps == [2, 4, 5]  # every watch_every steps, and the last
    assert len(tracker.checked) == 6
    for (step, name), (logged, direct) in tracker.checked.items():
        assert logged == pytest.approx(direct, abs=1e-5), (step, name)
    assert abs(tracker.checked[(5, "sample_ko")][1]) > 1e-4  # the adapter moved: not a comparison of zeros
    for step, logged in tracker.logged.items():  # each language pools its one medical set; worst_lang the lower
        assert logged["watch/step"] == step
        ko, en = logged["watch/lang/ko/delta_gold_ll"], logged["watch/lang/en/delta_gold_ll"]
        assert (ko, en) == (logged["watch/sample_ko/delta_gold_ll"], logged["watch/sample_en/delta_gold_ll"])
        assert logged["watch/worst_lang/delta_gold_ll"] == min(ko, en)
        assert logged["watch/lang/ko/delta_gold_ll_ci_low"] <= ko <= logged["watch/lang/ko/delta_gold_ll_ci_high"]
    assert out["watch/total_s"] > 0 and out["watch/overhead_frac"] > 0


def _fake_step(factor: float) -> Any:
    """An optimizer step that multiplies the final norm's weight by `factor` (1.0: a model that never changes).

    A constructed drift: sharper logits lower the log-probability of every gold letter that is not already the
    most likely token, on every question of every set (LoRA on this random tiny model barely moves its near-uniform
    letter probabilities, so real training cannot make it forget on cue). The base is scored before the first step.
    """

    def step(self: TrainRecipe, batches: list) -> dict[str, float]:
        with torch.no_grad():
            causal_lm_of(self.model).model.norm.weight.mul_(factor)
        return {"train/loss": 1.0}

    return step


@pytest.mark.parametrize(("action", "patience"), [("stop", 1), ("mark", 2)])
def test_guard_acts_on_a_run_that_forgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str, patience: int
) -> None:
    """A drift that lowers every gold letter's probability: stop ends training at the first watched step; mark
    records the second (patience 2) and trains on to the end."""
    monkeypatch.setattr(TrainRecipe, "optimizer_step", _fake_step(6.0))
    guard = ["trainer.guard.protect=[lang:ko,sample_en]", "trainer.guard.margin=0.05", f"trainer.guard.action={action}"]
    summary, lines = _run(
        tmp_path, "trainer.max_steps=6", "eval.watch_every=2", *guard, f"trainer.guard.patience={patience}"
    )
    fired_at = 2 * patience
    assert summary["run/status"] == "ok" and summary["guard/fired"] == 1
    assert summary["guard/step"] == fired_at and summary["guard/action"] == action
    assert summary["guard/ci_high"] < -0.05 and summary["guard/ci_low"] <= summary["guard/delta"]
    assert summary["guard/group"] in ("lang:ko", "sample_en") and summary["guard/level"] == 0.95
    assert "paired bootstrap" in summary["guard/test"] and "upper end below -0.05" in summary["guard/test"]
    trained = max(x["step"] for x in lines if "train/loss" in x)
    assert trained == (fired_at if action == "stop" else 6)
    assert [x["step"] for x in lines if "guard/fired_step" in x] == [fired_at]
    assert (tmp_path / "run" / "adapter").is_dir()


def test_guard_stays_quiet_on_a_model_that_does_not_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrainRecipe, "optimizer_step", _fake_step(1.0))
    summary, lines = _run(
        tmp_path, "trainer.max_steps=4", "eval.watch_every=1", "trainer.guard.protect=[lang:ko,lang:en]",
        "trainer.guard.margin=0",
    )  # fmt: skip
    assert summary["guard/fired"] == 0 and max(x["step"] for x in lines if "train/loss" in x) == 4
    watched = [x for x in lines if "watch/step" in x]
    assert [x["step"] for x in watched] == [1, 2, 3, 4]
    assert all(x["watch/lang/ko/delta_gold_ll"] == 0.0 and x["guard/below"] == 0.0 for x in watched)


def _scripted_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deltas: list[float]) -> Any:
    """A watch of one Korean set whose run scores are the base's plus `deltas` (gold option 0), no model."""
    guard = ["eval.watch=[sample_ko]", "eval.watch_every=10", "trainer.guard.protect=[sample_ko]"]
    cfg = to_train_config(_compose(tmp_path, *guard, "trainer.guard.margin=0.05"))
    n = len(deltas)
    ids, prompts, options = [str(i) for i in range(n)], [(1, 2)] * n, [[5, 6]] * n
    watch = watch_module.Watch(cfg, [WatchSet("sample_ko", "ko", "medical", ids, prompts, options, [0] * n)], None)
    watch.ranks, watch.base = Ranks(), {"sample_ko": [[-2.0, -1.0]] * n}
    run = {"sample_ko": [[-2.0 + d, -1.0] for d in deltas]}
    monkeypatch.setattr(watch_module, "score_watch", lambda *args: run)
    monkeypatch.setattr(watch_module, "scoring_view", contextlib.nullcontext)
    return watch


def test_the_guard_tests_the_interval_not_the_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs lose 0.1 nats on average, twice the margin; only the one whose paired interval lies wholly below
    -margin fires (the noisy one's interval reaches above it), and at the step it was watched."""
    noisy = _scripted_watch(tmp_path, monkeypatch, [-0.6, 0.4] * 4)
    metrics = noisy.observe(tiny_model("tiny_llama"), step=10)
    assert metrics["watch/sample_ko/delta_gold_ll"] == pytest.approx(-0.1)
    assert metrics["watch/sample_ko/delta_gold_ll_ci_high"] > -0.05 and metrics["guard/below"] == 0.0
    assert noisy.fired is None and not noisy.stop
    steady = _scripted_watch(tmp_path, monkeypatch, [-0.1] * 8)
    metrics = steady.observe(tiny_model("tiny_llama"), step=10)
    assert metrics["guard/below"] == 1.0 and metrics["guard/fired_step"] == 10.0 and steady.stop
    assert steady.fired["delta"] == pytest.approx(-0.1) and steady.fired["ci_high"] == pytest.approx(-0.1)


def test_the_watch_scores_with_the_eager_layers_of_a_compiled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trainer.compile compiles each decoder layer for the training rows; the watch's batches have other lengths, so
    it scores with the eager forwards (no recompilation) and training gets the compiled ones back."""
    watch = _scripted_watch(tmp_path, monkeypatch, [0.0] * 4)
    scripted, seen = watch_module.score_watch, []

    def spy(plain: torch.nn.Module, *args: Any) -> Any:
        seen.append([layer.forward for layer in decoder_layers(plain)])
        return scripted(plain, *args)

    monkeypatch.setattr(watch_module, "score_watch", spy)
    monkeypatch.setattr(watch_module, "scoring_view", scoring_view)  # the real one: it swaps the layers
    model = tiny_model("tiny_llama")
    eager = [layer.forward for layer in decoder_layers(model)]
    apply_speedups(model, to_train_config(_compose(tmp_path, "trainer.compile=true")).trainer)  # compiles lazily
    compiled = [layer.forward for layer in decoder_layers(model)]
    watch.observe(model, step=10)
    assert seen == [eager] and [layer.forward for layer in decoder_layers(model)] == compiled != eager


def test_keep_best_saves_the_adapter_of_the_step_it_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real training, a checkpoint at every step; the criterion is scripted so that the best (step 2, the first
    of two equal values) is not the last: the saved adapter is step 2's checkpoint, not step 4's."""
    scripted = iter([0.1, 0.5, 0.2, 0.5])  # steps 1-4, one watch each
    monkeypatch.setattr(watch_module, "criterion", lambda metrics, by: next(scripted))
    summary, _ = _run(
        tmp_path, "trainer.max_steps=4", "eval.watch_every=1", "trainer.keep=best", "trainer.save_every=1",
        "trainer.keep_checkpoints=0", "optim.lr=1e-2",
    )  # fmt: skip
    assert (summary["keep/step"], summary["keep/value"], summary["keep/last_step"]) == (2, 0.5, 4)
    saved = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")

    def checkpoint(step: int) -> dict[str, torch.Tensor]:
        state = torch.load(tmp_path / "run" / "checkpoints" / f"step_{step:06d}" / "trainable.pt")
        return {k.removeprefix("model.").replace(".default", ""): v for k, v in state.items()}

    best, last = checkpoint(2), checkpoint(4)
    assert saved.keys() == best.keys() and saved
    for key in saved:
        torch.testing.assert_close(saved[key], best[key], rtol=0, atol=0)
    assert any(not torch.equal(saved[k], last[k]) for k in saved)


def test_a_resumed_watch_keeps_the_guard_and_chooses_among_later_steps(tmp_path: Path) -> None:
    """The checkpoint's watch state comes back (the guard's streak and record); the best step's weights were not
    checkpointed, so keep=best starts over from the resume step and says so."""
    cfg = to_train_config(_compose(tmp_path, "eval.watch_every=2", "trainer.keep=best"))
    watch = watch_module.Watch(cfg, [], tokenizer=None)
    fired = {"step": 4, "group": "lang:ko", "action": "mark"}
    watch.load_state({"streak": 2, "fired": fired, "best": {"step": 4, "value": 0.2}}, step=6)
    assert (watch.streak, watch.fired, watch.best) == (2, fired, None)
    assert watch.since_step == 6 and not watch.stop
    assert watch.due(8) and watch.due(cfg.trainer.max_steps) and not watch.due(7)
