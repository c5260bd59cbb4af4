"""The watch's config: the guard and keep=best act on a watch that names their groups, each wrong key is refused
before anything loads, and the GPU experiment of issue 22 (mix_watch) composes for each of its sweep's ratios."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from medtune.config import ConfigError, compose

NO_WATCH = ["eval.watch=[]", "eval.watch_every=0"]  # the demo watches sample_ko and sample_en


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([*NO_WATCH, "trainer.guard.protect=[lang:ko]"], r"trainer\.guard\.protect acts on the watch, which is off"),
        ([*NO_WATCH, "trainer.keep=best"], r"trainer\.keep=best acts on the watch, which is off"),
        (["eval.watch=[]"], r"eval\.watch_every > 0 but eval\.watch names no set"),
        (["eval.watch_every=-1"], r"eval\.watch_every=-1 must be >= 0"),
        (["eval.watch_batch_tokens=0"], r"eval\.watch_batch_tokens=0 must be > 0"),
        (["eval.watch_batch_size=0"], r"eval\.watch_batch_size=0 must be > 0"),
        (["trainer.guard.protect=[kormed_law]"], r"protect names 'kormed_law', which is neither a watch set"),
        (["trainer.keep=best", "trainer.keep_by=law"], r"keep_by names 'law', which is neither .* nor worst_lang"),
        (["+eval.watch_limits.kormed_law=9"], r"eval\.watch_limits\.kormed_law: 'kormed_law' is not in eval\.watch"),
        (["trainer.guard.protect=[lang:ko]", "trainer.guard.metric=acc"], r"needs eval\.watch_accuracy=true"),
        (["trainer.keep=first"], r"trainer\.keep"),
        (["trainer.guard.action=halt"], r"trainer\.guard\.action"),
        (["trainer.guard.level=1.0"], r"trainer\.guard\.level=1\.0 must be in \(0\.5, 1\)"),
    ],
)
def test_a_watch_setting_that_cannot_work_is_refused_with_its_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(overrides)


def test_the_demo_watches_and_the_guard_and_keep_name_its_groups() -> None:
    cfg = compose(["trainer.guard.protect=[lang:ko,sample_en]", "trainer.keep=best", "trainer.keep_by=sample_ko"])
    assert cfg.eval.watch == ["sample_ko", "sample_en"] and (cfg.eval.watch_every, cfg.eval.watch_limit) == (10, 16)
    assert cfg.trainer.guard.protect == ["lang:ko", "sample_en"] and cfg.trainer.keep_by == "sample_ko"
    assert compose(NO_WATCH).eval.watch_every == 0  # off, and nothing that acts on it


def test_the_gpu_watch_experiment_composes_for_each_ratio_of_its_sweep() -> None:
    """mix_watch is mix_sweep's training (same steps, rows, lr, quantization) at 1:1 and 1:0, with the watch on the
    law block and a medical set of each language, and a guard that marks."""
    text = (REPO / "medtune" / "conf" / "experiment" / "mix_watch.yaml").read_text()
    ratios = yaml.safe_load(text)["hydra"]["sweeper"]["params"]["data_mix.ratio"]
    assert [r.strip("'") for r in ratios.split(",")] == ["1:1", "1:0"]
    sweep = compose(["+experiment=mix_sweep"])
    for ratio in ("1:1", "1:0"):
        cfg = compose(["+experiment=mix_watch", f"data_mix.ratio='{ratio}'", "seed=0"])
        assert cfg.data_mix.ratio == ratio and cfg.run_name == "mix_watch"
        assert cfg.eval.watch == ["kormed_law", "kormedmcqa_doctor", "medqa_4opt"] and cfg.eval.watch_every == 10
        assert cfg.trainer.guard.protect == ["lang:ko", "kormed_law"] and cfg.trainer.guard.action == "mark"
        for key in ("max_steps", "micro_batch_size", "grad_accum_steps", "autocast_dtype", "keep"):
            assert getattr(cfg.trainer, key) == getattr(sweep.trainer, key), key
        assert (cfg.optim.lr, cfg.quantization, cfg.packing) == (sweep.optim.lr, sweep.quantization, sweep.packing)
        assert cfg.eval.tasks == sweep.eval.tasks and cfg.data_mix.sources == sweep.data_mix.sources
