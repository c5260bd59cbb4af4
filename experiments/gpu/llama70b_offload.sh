#!/usr/bin/env bash
# GPU runbook for issue 35 on one GPU (H100 80GB or H200): the LLaMA 3.3 70B architecture at full width (random
# weights, nf4, LoRA r=16 on every linear layer), FSDP on one rank (`torchrun --nproc-per-node 1`), loaded one
# decoder layer at a time (sharding.load=per_layer), once with FSDP's CPU offload (variant `offload`) and once
# without (`resident`). Each run: load, a short train, the held-out loss, then lm-eval on a built-in task, so the
# summary has sys/load, sys/train, sys/eval (held-out) and sys/lm_eval peaks; `python -m medtune.memory ... --json`
# with the same overrides runs first. `collect` writes llama70b_offload.{json,md}: every phase measured beside the
# estimator, the error, useful tokens/s, and the load peak above the loaded state against one decoder layer.
#
# Which set: `python -m medtune.memory` with these overrides (grad_ckpt_every=1, no activation offload, 1 x 2048)
# predicts (GiB, resident / offloaded) train 46.3 / 9.0, load 41.5 / 4.9, held-out 44.1 / 6.8: both fit 80 GB, so
# both run, offload first (the issue's run; never yet run on a GPU). lm-eval's phase has no prediction (its rows come
# from the questions). Per-layer loading holds one unit above the loaded state: a decoder layer (1.30 GiB with its
# two linears filled in bf16) or, last, the root (embeddings + head, 3.91 GiB): the root is the predicted peak.
# Offloaded, the loaded state on the GPU is the layers' nf4 quantisation state (1.01 GiB: no parameter, so FSDP2
# leaves it there): the offload run's train and load peaks test that term too.
#
# Device time (30 min per session, 600 s per call). Measured before: the 80-layer FSDP job, loaded whole, took 52 s
# for 10 steps of 2.47 s (run/wall_s, experiments/results/llama70b_1gpu, H100); the 2-rank job with a held-out pass
# 76 s (fsdp_2gpu). Not measured: per-layer loading (the same quantisation plus a fully_shard per layer: allow 60 s)
# and offload (pinning ~40 GiB of shards, then ~2 x 37 GiB copied in per step at ~25 GB/s: allow 6 s a step, 2 s a
# forward). Per run: 60 s (imports, data, lm-eval) + load <= 60 s + 6 steps <= 40 s + 4 held-out and 1 scoring
# forward <= 10 s + lm-eval setup <= 60 s: <= 4 min, about 8 for both (each under a 600 s timeout); wheels 60 s.
# So `start` (600 s: installs, then waits 450 s) and one `wait 540`, a second only if the first says still running:
# <= 3 calls, about 20 min with the machine's start.
#
# Calls, back to back (the machine forgets /root 30 s after a call):
#   bash experiments/gpu/llama70b_offload.sh start .gpuA2 .gpuB    # carry [".gpuA2", ".gpuB"] (41 MiB of wheels:
#                                          # bitsandbytes; hydra, omegaconf, antlr4, transformers, peft, lm-eval,
#                                          # datasets...), starts the runs, waits 450 s, collects
#   bash experiments/gpu/llama70b_offload.sh wait 540              # until ALL_DONE; $OUT/llama70b_offload.* each time
#   bash experiments/gpu/llama70b_offload.sh stop                  # the driver and what it started
#   bash experiments/gpu/llama70b_offload.sh overrides offload     # a variant's overrides, one a line
# On a CPU, the same driver and collect with model=tiny_llama (gloo, no nf4, no offload: it needs CUDA):
#   DRY=1 OUT=/tmp/dry bash experiments/gpu/llama70b_offload.sh start && DRY=1 OUT=/tmp/dry bash ... wait 300
# VARIANTS="offload" (exported into `start`) runs one; STEPS, HELDOUT, QUESTIONS change the phases' sizes.
set -uo pipefail
. "$(dirname "$0")/common.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DRY=${DRY:-0} STEPS=${STEPS:-6} HELDOUT=${HELDOUT:-4} QUESTIONS=${QUESTIONS:-8}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
PHASES=(packing=packed packing.split_long=true trainer.micro_batch_size=1 trainer.grad_ckpt_every=1
        trainer.offload_activations=false trainer.max_steps="$STEPS" trainer.log_every=1 trainer.progress_bar=false
        "trainer.eval_batches=$HELDOUT" logger=jsonl data_mix=demo data_mix.upsample=true data_mix.max_repeat=64
        stage=train_eval eval=demo "eval.tasks=[sample_en]" "eval.limit=$QUESTIONS" eval.compare_base=false
        eval.watch_every=0 eval.sanity=off eval.cache_base=false)
if [[ $DRY == 1 ]]; then  # this machine: the work tree itself, runs under $OUT
  SRC=$(cd "$HERE/../.." && pwd) RUNS=$OUT/runs
  export PYTHONPATH=$SRC MEDTUNE_CACHE_DIR=$OUT/cache OMP_NUM_THREADS=1
  read -ra VARIANTS <<< "${VARIANTS:-resident}"
  MODEL=(model=tiny_llama sharding=fsdp sharding.param_dtype=float32 trainer.device=cpu packing.max_seq_len=128)
else
  SRC=/root/src70o RUNS=/root/runs70o
  export PYTHONPATH=/root/site:$SRC MEDTUNE_CACHE_DIR=/root/cache OMP_NUM_THREADS=4
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  read -ra VARIANTS <<< "${VARIANTS:-offload resident}"
  MODEL=(model=llama3_3_70b model.init=random quantization=nf4 sharding=fsdp sharding.load=per_layer
         packing.max_seq_len=2048)
fi
export MEDTUNE_RUNS_DIR=$RUNS

overrides() {  # VARIANT: the run's overrides (the estimator gets the same)
  local offload=false
  [[ $1 == offload ]] && offload=true
  echo "${MODEL[*]} ${PHASES[*]} sharding.cpu_offload=$offload"
}

one_run() {  # VARIANT: the prediction, then the run, under a time limit
  local v=$1 t0=$SECONDS
  read -ra args <<< "$(overrides "$v")"
  python3 -m medtune.memory "${args[@]}" --json > "$RUNS/$v.predict.json" 2> "$RUNS/$v.predict.log"
  timeout "${RUN_TIMEOUT_S:-600}" torchrun --standalone --nproc-per-node 1 -m medtune.train "${args[@]}" \
    hydra.run.dir="$RUNS/$v" > "$RUNS/$v.log" 2>&1
  echo "$v rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}

runs() {
  begin_runs
  for v in "${VARIANTS[@]}"; do one_run "$v"; done
  touch "$RUNS/ALL_DONE"
}

collect() {
  cat "$RUNS/rc.txt" 2>/dev/null; tail -3 "$RUNS/driver.log" 2>/dev/null
  python3 "$HERE/llama70b_offload_table.py" "$RUNS" "$OUT" "${VARIANTS[@]}"
  for v in "${VARIANTS[@]}"; do [[ -f $RUNS/$v.log ]] && gzip -c "$RUNS/$v.log" > "$OUT/$v.log.gz"; done
  cp "$RUNS"/*.predict.json "$RUNS/versions.txt" "$OUT/" 2>/dev/null
  [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running"
}

case "${1:-}" in
  start)
    if [[ $DRY != 1 ]]; then
      for d in "${@:2}"; do pip_target /root/site "$d"/*.whl || exit 1; done
      rm -rf "$RUNS" && copy_source || exit 1
      { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; free -g | sed -n 2p; } \
        | tee "$RUNS/versions.txt"
    else
      rm -rf "$RUNS" && mkdir -p "$RUNS"
    fi
    python3 -c "import torch, transformers, peft, bitsandbytes, lm_eval; print('torch', torch.__version__, \
'| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__, \
'| lm_eval', lm_eval.__version__)" 2>&1 | tail -1 | tee -a "$RUNS/versions.txt"
    DRIVER_LOG="$RUNS/driver.log" start_driver "$SRC/experiments/gpu/llama70b_offload.sh"
    echo $! > "$RUNS/driver.sid"  # setsid: the driver leads its own session (`pkill -s SID` ends it and its runs)
    [[ $DRY == 1 ]] && exit 0
    wait_done "$RUNS" "${START_WAIT_S:-450}" "$(cat "$RUNS/driver.sid")"; collect ;;
  runs) runs ;;
  overrides) read -ra args <<< "$(overrides "${2:-offload}")"; printf '%s\n' "${args[@]}" ;;  # the tests compose these
  wait)  # a machine given back between calls has no runs: say so at once instead of waiting
    [[ -f $RUNS/driver.sid ]] || { echo "no $RUNS here (the machine was given back?): start again" >&2; exit 1; }
    wait_done "$RUNS" "${2:-540}" "$(cat "$RUNS/driver.sid")"; collect ;;
  stop) stop_driver; pkill -f "torchrun --standalone --nproc-per-node 1 -m medtune\.train" ;;
  *) echo "usage: $0 start [WHEEL_DIR...] | wait [SECONDS] | stop | overrides VARIANT   (DRY=1: tiny_llama here)" >&2
     exit 2 ;;
esac
