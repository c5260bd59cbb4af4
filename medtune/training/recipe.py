"""The LoRA/QLoRA fine-tuning recipe behind `python -m medtune.train`: setup, train, evaluate, cleanup.

The loop is written out in `TrainRecipe.train` and `optimizer_step`; builders in other modules turn config
sections into objects, so nothing below them reads the config tree.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medtune.config import TrainConfig
from medtune.models.build import build_tokenizer
from medtune.models.lora import (
    merge_and_save,
    save_adapter,
    trainable_parameters,
)
from medtune.runtime import peak_memory, process_group, shards
from medtune.runtime.watchdog import Watchdog
from medtune.training import distributed, fast_paths, step_metrics
from medtune.training.batches import DataPipeline, build_data, plan_mix
from medtune.training.checkpoint import layout, resume, store
from medtune.training.errors import TrainingError
from medtune.training.loss_module import compute_loss, eval_loss
from medtune.training.offload import ActivationOffloader
from medtune.training.optim import build_optimizer, build_scheduler
from medtune.training.sharded_load import build_trainable, loads_per_layer
from medtune.training.watch import Watch

log = logging.getLogger("medtune.train")


class TrainRecipe:
    """One run: model + adapter, data, optimizer, the loop, checkpoints and the final adapter."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        tracker: Any,
        dist: process_group.DistInfo,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.tracker, self.dist = cfg, run_dir, tracker, dist
        self.watchdog = watchdog or Watchdog()  # the hang guard: this rank's phase and step; started by run()
        self.device = dist.device
        self.step = 0
        self.data_position = {"epoch": 0, "batch": 0}
        self.summary: dict[str, Any] = {}
        self.checkpoint_record: dict[str, Any] = {}  # the run's config and resume history, stored in each checkpoint
        # the checkpoint run_record.open_record checked against the config (training.run sets it); None: step 0
        self.resume_from: Path | None = None
        self.resume_plan: resume.ResumePlan | None = None  # its accepted changes, which the data check extends
        self.watch: Watch | None = None  # the forgetting watch during training (eval.watch), built in setup
        self.offloader: ActivationOffloader | None = None  # trainer.offload_activations on a GPU, built with the model

    # ----------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Mix the data (one that cannot be met stops before any model), model and adapter, batches, optimizer."""
        self.watchdog.pause("data")  # each rank tokenizes and packs on its own (no collective): slow is not stuck
        planned = plan_mix(self.cfg, build_tokenizer(self.cfg.model), self.dist.is_main)
        self.watchdog.pause("load model")  # no collective while loading: a slow disk is not a hang
        self.setup_model()
        self.watchdog.pause("data")
        self.data: DataPipeline = build_data(self.cfg, self.tokenizer, self.model, self.dist, planned)
        self.summary.update(self.data.report)
        self.log_fast_paths()  # after the data: packing has chosen the attention kernel by now
        self.setup_optimizer()
        # the watch sets are read and tokenized here, still paused (local work); None unless eval.watch is on
        self.watch = Watch.build(self.cfg, self.tokenizer, self.watchdog.tick)
        self._maybe_resume()

    def setup_model(self) -> None:
        """Base model (quantised as configured), LoRA adapter, then the loss wrapper and DDP/FSDP (with FSDP: one
        decoder layer loaded and sharded at a time unless sharding.load=whole, training/sharded_load.py)."""
        cfg = self.cfg
        peak_memory.reset_peak_memory(self.device, release_cache=True)  # a multirun's previous job cached blocks too
        built = build_trainable(cfg, self.dist)
        model, self.model, self.tokenizer, self.offloader = built.model, built.wrapped, built.tokenizer, built.offloader
        self.summary["trainer/speedups"] = ",".join(built.speedups) or "none"
        self.summary["trainer/checkpointed_layers"] = len(built.checkpointed)
        if cfg.sharding.strategy == "fsdp":
            self.summary["sharding/load"] = "per_layer" if loads_per_layer(cfg) else "whole"
        counts = trainable_parameters(model)
        self.summary.update(
            {
                "model/trainable_params": counts["trainable"],
                "model/total_params": counts["total"],
                "model/trainable_pct": counts["percent"],
            }
        )
        self.summary.update(peak_memory.per_rank_memory(peak_memory.memory_metrics(self.device, "load"), self.device))

    def log_fast_paths(self) -> str:
        """Log and record (summary.json run/fast_paths) the fast paths this run takes, read from the built model."""
        return fast_paths.log_taken(self.summary, self.model, self.cfg, self.device)

    def setup_optimizer(self) -> None:
        """Optimizer over the trainable parameters, schedule, and the FLOP model for MFU."""
        self.optimizer = build_optimizer(self.cfg.optim, self.model)
        self.scheduler = build_scheduler(self.cfg.optim, self.cfg.trainer.max_steps, self.optimizer)
        layers = self.summary["trainer/checkpointed_layers"]
        self.flops = step_metrics.flop_model(shards.unwrap(self.model), layers)
        self.peak_tflops = step_metrics.device_peak_tflops(self.device)

    def _maybe_resume(self) -> None:
        if self.dist.is_main:
            layout.remove_partial(self.run_dir / "checkpoints")
        process_group.barrier()  # still paused: a rank may wait here while another finishes its data (bounded by the
        self.watchdog.enter("resume")  # process group's timeout); from here on every collective is watched
        point = self.resume_from  # the plan's checkpoint (checkpoint/resume.py); None: step 0
        if point is None:
            return
        found = resume.check_before_load(
            point, self.run_dir, self.data.fingerprint, self.cfg, self.resume_plan, self.checkpoint_record
        )
        self.summary.update(found)
        state = store.load(point, self.model, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.data_position = state["data_position"]
        if self.watch is not None and "watch" in state:
            self.watch.load_state(state["watch"], self.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", point, self.step, *self.data_position.values())

    # ----------------------------------------------------------------------------------------------- train
    def train(self) -> dict[str, float]:
        """Run optimizer steps until trainer.max_steps (or the guard stops it); returns the last logged metrics."""
        tc = self.cfg.trainer
        started = time.perf_counter()
        self.model.train()
        peak_memory.reset_peak_memory(self.device)
        micro_batches = self.data.train_stream(self.data_position)
        last: dict[str, float] = {}
        if self.watch is not None:
            self.watchdog.enter("watch base", self.step)
            self.watch.begin(self.model)
        bar = _progress(tc.max_steps, self.step, enabled=tc.progress_bar and self.dist.is_main)
        self.watchdog.enter("train", self.step + 1)  # the step in progress
        self.watchdog.polling = True  # one process: SIGTERM/SIGINT wait for the step's end (watchdog.py)
        while self.step < tc.max_steps:
            group = [next(micro_batches) for _ in range(tc.grad_accum_steps)]
            with out_of_memory_hint(self.cfg, f"training step {self.step + 1}"):
                measured = self.optimizer_step([b for b, _ in group])
            self.data_position = group[-1][1]
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{measured['train/loss']:.4f}")
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                memory = peak_memory.per_rank_memory(peak_memory.memory_metrics(self.device, "train"), self.device)
                last = {**measured, **memory, "train/epoch": self.data.epochs(0, self.data_position)}
                self.tracker.log(last, step=self.step)
            if tc.eval_every and self.step % tc.eval_every == 0:  # inside the train phase: its peak stays whole
                self.tracker.log(self.eval_loss(measure_memory=False), step=self.step)
            if self.watch is not None and self.watch.due(self.step):
                self.watchdog.enter("watch", self.step)
                self.tracker.log(self.watch.observe(self.model, self.step), step=self.step)
            stop = self.watchdog.stop_signal is not None
            if tc.save_every and (self.step % tc.save_every == 0 or stop):  # a stopped run resumes from here
                self.save_checkpoint()
            if stop:
                raise self.watchdog.terminated(self.step, saved=bool(tc.save_every))
            if self.watch is not None and self.watch.stop:
                break
            self.watchdog.enter("train", self.step + 1)  # the step in progress
        self.watchdog.polling = False
        bar.close()
        loop_s = time.perf_counter() - started  # this invocation's loop: base scores, steps, watch, checkpoints
        last = {**last, "train/loop_s": loop_s}
        if self.watch is not None:  # keep=best: the kept step's weights are back in the model from here on
            last |= self.watch.finish(self.model, self.step, loop_s)
        return last

    def optimizer_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over gradient-accumulation micro-batches, loss normalised by all label tokens."""
        tc = self.cfg.trainer
        n_labels = process_group.all_reduce_sum(sum(int(b["n_label_tokens"]) for b in batches), self.device)
        loss_total = torch.zeros((), device=self.device)
        with step_metrics.StepTimer(self.device) as timer:
            for i, batch in enumerate(batches):
                self.watchdog.tick(self.step + 1)
                last = i == len(batches) - 1
                with distributed.no_sync_unless(self.model, last=last):
                    with self.offloader.forward() if self.offloader else contextlib.nullcontext():  # forward only
                        loss_sum, _ = compute_loss(self.model, batch, self.device, tc)
                    # Scaled so that the gradient is d(sum of token losses)/d(theta) / (label tokens of the step, all
                    # ranks); DDP/FSDP average over ranks, hence the world_size factor.
                    (loss_sum * self.dist.world_size / n_labels).backward()
                loss_total += loss_sum.detach()
            grad_norm = self._clip_grads()
            self._check_finite(loss_total, grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        useful = sum(int(b["n_useful_tokens"]) for b in batches)
        # one all-reduce for the step's loss and every rank's useful tokens (throughput of the whole job)
        totals = process_group.all_reduce_sum(
            torch.stack([loss_total.float(), loss_total.new_tensor(useful)]), self.device
        )
        loss = totals[0] / n_labels
        rows = sum(b["input_ids"].numel() for b in batches)
        labels = sum(int(b["n_label_tokens"]) for b in batches)
        ctx = sum(float(b["ctx_tokens"]) for b in batches) / max(useful, 1)
        flops, nemo = self.flops.per_token(ctx) * useful, self.flops.per_token_nemo(ctx) * useful
        out = {"train/loss": float(loss), "train/lr": self.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm}
        out.update(step_metrics.throughput_metrics(useful, rows, labels, timer.seconds, flops, self.peak_tflops, nemo))
        if self.dist.world_size > 1:  # train/useful_tokens_per_s stays per GPU (this rank's)
            out["train/useful_tokens_per_s_all_ranks"] = float(totals[1]) / timer.seconds
        return out

    def _clip_grads(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.cfg.trainer.max_grad_norm or float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _check_finite(self, loss: torch.Tensor, grad_norm: float) -> None:
        if torch.isfinite(loss).item() and math.isfinite(grad_norm):
            return
        found = layout.list_checkpoints(self.run_dir / "checkpoints")
        last_good = str(found[-1]) if found else "none (set trainer.save_every to keep some)"
        raise TrainingError(
            f"non-finite {'loss' if not torch.isfinite(loss).item() else 'gradient norm'} at step {self.step + 1}; "
            f"last good checkpoint: {last_good}. Lower optim.lr, check quantization.compute_dtype, or resume with "
            "trainer.resume=<that checkpoint>."
        )

    # ----------------------------------------------------------------------------------------------- eval / save
    @torch.no_grad()
    def eval_loss(self, measure_memory: bool = True) -> dict[str, float]:
        """Mean loss per label token on the held-out rows of the mix (and the eval phase's memory, if asked); nothing
        with trainer.eval_batches=0."""
        if self.cfg.trainer.eval_batches == 0:
            return {}
        if measure_memory:
            peak_memory.reset_peak_memory(self.device)
        self.watchdog.enter("held-out loss", self.step)
        self.model.eval()
        total, n = eval_loss(self.model, self.data.heldout_batches(), self.device, self.cfg.trainer, self.watchdog.tick)
        self.model.train()
        total = process_group.all_reduce_sum(total, self.device)
        n = process_group.all_reduce_sum(n, self.device)
        out = {"eval/loss": float(total / n) if n else float("nan"), "eval/loss_tokens": float(n)}
        if not measure_memory:
            return out
        return {**out, **peak_memory.per_rank_memory(peak_memory.memory_metrics(self.device, "eval"), self.device)}

    def save_checkpoint(self) -> None:
        """Write a resumable checkpoint: one file set from rank 0, or every rank's shard under FSDP."""
        self.watchdog.enter("checkpoint", self.step)
        state = {"data_position": self.data_position, **self.checkpoint_record, "data": self.data.fingerprint}
        if self.watch is not None:
            state["watch"] = self.watch.state()
        keep = self.cfg.trainer.keep_checkpoints
        checkpointer = store.for_run(self.cfg.sharding.strategy, self.dist.is_main)
        checkpointer.save(
            self.run_dir / "checkpoints", self.step, self.model, self.optimizer, self.scheduler, state, keep
        )

    def release(self) -> None:
        """Drop what the run holds (model, optimizer, data): memory free for the next run even under a traceback."""
        self.__dict__.clear()

    def release_optimizer(self) -> None:
        """Drop the optimizer and its state (after the last checkpoint): evaluation does not need them."""
        self.optimizer = self.scheduler = None

    def save_adapter(self) -> Path:
        """Save the adapter in peft format (and a merged bf16 model when trainer.merge_adapter)."""
        path = self.run_dir / "adapter"
        self.watchdog.enter("save adapter", self.step)
        state = distributed.full_state_dict(self.model)
        if self.dist.is_main:
            save_adapter(shards.unwrap(self.model), path, state)
            if self.cfg.trainer.merge_adapter:
                merge_and_save(shards.unwrap(self.model), self.run_dir / "merged")
        process_group.barrier()
        return path


@contextlib.contextmanager
def out_of_memory_hint(cfg: TrainConfig, phase: str) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that says what was running and which knobs lower the peak."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        tc, pk = cfg.trainer, cfg.packing
        rows = f"{tc.micro_batch_size} x {pk.max_seq_len or 'longest'} tokens"
        raise TrainingError(
            f"CUDA out of memory in {phase} ({rows} per micro-batch, quantization={cfg.quantization.method}, "
            f"grad_ckpt_every={tc.grad_ckpt_every}, loss_chunk_size={tc.loss_chunk_size}): {str(err).splitlines()[0]}\n"
            "Lower the peak with trainer.micro_batch_size (and raise trainer.grad_accum_steps to keep the batch), "
            "packing.max_seq_len, trainer.grad_ckpt_every=1, trainer.loss_chunk_size, quantization=nf4, or "
            "sharding=fsdp; `python -m medtune.memory <same overrides>` predicts the peak before you run."
        ) from err


def _progress(total: int, start: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
