#!/usr/bin/env bash
# GPU runbook for the data-balance sweep (issue 11): Gemma 3 270M (real weights), nf4 QLoRA, exact packing,
# English:Korean = 0:1, 3:10, 1:1, 10:3, 1:0 x seeds 0, 1, 2, through `python -m medtune.train -m` (one Hydra
# multirun per ratio over the seeds, the five running side by side on one GPU), then `python -m medtune.report`.
#
# The device machine lacks hydra, bitsandbytes, lm-eval and the data, and a call carries at most 64 MiB, so a
# bundle (GGUF + wheels + raw data as .tar.xz) is staged first with ../shared/tools/device-stage.sh:
#   mkdir -p /tmp/bundle/wheels && cp <gguf> /tmp/bundle/ && cp .whl/*.whl .whl3/*.whl /tmp/bundle/wheels/
#   tar -cJf /tmp/bundle/gpudata.tar.xz .gpudata      # .gpudata: copies of the ../shared/data folders used
#   ../shared/tools/device-stage.sh /tmp/bundle --part-mib 60
# then, in back-to-back calls (the machine forgets /root 30 s after a call):
#   bash experiments/gpu/mix_sweep.sh stage N          # once per part, carry [".stage/pN"]
#   bash experiments/gpu/mix_sweep.sh setup            # unpack, install wheels, prepare data, copy the repo
#   bash experiments/gpu/mix_sweep.sh start            # base eval, then one multirun per ratio, in the background
#   (rerun some ratios: RATIOS="3:10 10:3" EVAL_BS=16 bash experiments/gpu/mix_sweep.sh start; SKIP_BASE=1 when the
#    base is already in /root/cache at that batch size)
#   bash experiments/gpu/mix_sweep.sh wait 560         # progress; repeat until it says "all done"
#   bash experiments/gpu/mix_sweep.sh collect          # $OUT/mix_sweep.tar.gz: run dirs (no checkpoints), logs
# and here: python -m medtune.report <runs> --out <report> --reference 1:1
# Another experiment through the same steps (issue 22, the watch): EXPERIMENT=mix_watch RATIOS="1:1 1:0" SEEDS=0;
# ARGS adds overrides to every training job and NAME names its runs' folder (default: the experiment), e.g. the
# same 1:1 run without the watch, to time it:
#   NAME=mix_watch_off ARGS="eval.watch_every=0 trainer.guard.protect=[]" EXPERIMENT=mix_watch RATIOS=1:1 SEEDS=0
# Jobs run from a copy of the repo in /root/src (the work tree is replaced at every call) and outlive the call.
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/runs LOGS=/root/runs/logs
GGUF=/root/tmp/bundle/gemma-3-270m-q4_k_m.gguf
SEEDS=${SEEDS:-0,1,2} RATIOS=${RATIOS:-"0:1 3:10 1:1 10:3 1:0"}
EXPERIMENT=${EXPERIMENT:-mix_sweep} ARGS=${ARGS:-}
NAME=${NAME:-$EXPERIMENT}
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=$RUNS
export MEDTUNE_DATA_DIR=/root/data/.gpudata HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=3
# Measured on the H100 (2026-11-25): lm-eval's peak is ~23.6 GB per process at eval.batch_size=16 (the logits of
# 16 rows x ~600 tokens x 262k vocabulary), so five streams at 16 ran out of memory (3:10 and 10:3 failed in
# lm-eval). Batch 8 halves those logits (~12 GB expected, not measured): five streams fit in 80 GB; and since
# then an lm-eval OOM is retried at half the batch instead of failing the job. The rerun of 3:10 and 10:3
# (EVAL_BS=16 RATIOS="3:10 10:3", two streams) measured 20.0 GiB allocated / 22.5 reserved per lm-eval process.
# Keep one batch size for a whole sweep: in bf16 batch 8 vs 16 changed 60 of 8,110 base predictions.
EVAL_BS=${EVAL_BS:-8}
COMMON=("+experiment=$EXPERIMENT" "model.path=$GGUF" logger=jsonl "eval.batch_size=$EVAL_BS" eval.sanity=warn)

case "${1:-}" in
  stage) stage_part "$2" ;;
  setup)
    set -e
    unpack_bundle
    mkdir -p /root/data && tar -xJf /root/tmp/bundle/gpudata.tar.xz -C /root/data
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site \
      /root/tmp/bundle/wheels/*.whl
    rm -rf "$SRC" && mkdir -p "$SRC" && cp -r medtune experiments pyproject.toml "$SRC/"
    cd "$SRC"
    python3 -c "import torch, transformers, peft, bitsandbytes, lm_eval, hydra; print('torch', torch.__version__, \
'cuda', torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, \
'| bitsandbytes', bitsandbytes.__version__, '| lm_eval', lm_eval.__version__, '| hydra', hydra.__version__)" \
      | tee /root/versions.txt
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a /root/versions.txt
    time python3 -m medtune.data prepare --sources kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa pubmedqa \
      mmlu chatdoctor_en medquad 2>&1 | tail -25
    python3 -m medtune.models convert --gguf "$GGUF" 2>&1 | tail -3 ;;
  start)
    cd "$SRC" && mkdir -p "$LOGS" && date -u +%FT%TZ > "$LOGS/started"
    # The base model (nf4, adapter off) scored once; the sweep jobs reuse it from the eval cache.
    if [[ -z ${SKIP_BASE:-} ]]; then
      setsid nohup python3 -m medtune.evaluate "${COMMON[@]}" hydra.run.dir=$RUNS/base_probe \
        > "$LOGS/base.log" 2>&1 < /dev/null &
      sleep "${BASE_HEAD_START:-75}"
    fi
    # One multirun per ratio (seeds inside), the five side by side: if time runs out, every ratio has as many seeds.
    for r in $RATIOS; do
      # shellcheck disable=SC2086  # ARGS: word-split on purpose, one override per word
      setsid nohup python3 -m medtune.train -m "${COMMON[@]}" "data_mix.ratio='$r'" "seed=$SEEDS" $ARGS \
        "hydra.sweep.dir=$RUNS/$NAME/ratio_${r/:/-}" > "$LOGS/ratio_${r/:/-}.log" 2>&1 < /dev/null &
      sleep 3
    done
    "$0" wait "${2:-420}" ;;
  wait)
    end=$((SECONDS + ${2:-560}))
    while pgrep -f "^python3 -m medtune\.(train|evaluate)" > /dev/null && (( SECONDS < end )); do sleep 20; done
    echo "== $(date -u +%T) started $(cat "$LOGS/started" 2>/dev/null); summaries: $(find "$RUNS" -name summary.json | wc -l)"
    for f in "$LOGS"/*.log; do echo "-- $f"; grep -a "step \|lm-eval scored\|Error\|error\|Launching\|#[0-9]" "$f" | tail -4; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    pgrep -f "^python3 -m medtune\.(train|evaluate)" > /dev/null && echo "still running" || echo "all done"
    "$0" collect > /dev/null ;;  # the machine goes back after 30 min held: bring back what is finished every time
  collect)
    cd "$RUNS" && cp /root/versions.txt "$LOGS/" 2>/dev/null
    tar --exclude="checkpoints" --exclude="*.safetensors" --exclude="*.bin" --exclude="samples.jsonl" --exclude="tasks" --exclude="hf_cache" \
      -czf "$OUT/$NAME.tar.gz" base_probe "$NAME" logs && ls -la "$OUT" ;;
  *) echo "usage: $0 stage N | setup | start [wait_s] | wait [s] | collect" >&2; exit 2 ;;
esac
