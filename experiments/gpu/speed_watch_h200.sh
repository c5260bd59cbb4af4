#!/usr/bin/env bash
# GPU runbook for issues 21 (speed) and 22 (the watch) in one H200 session (kind nvidia-h200):
#   1. the GPU tests of the flash varlen packing kernel (bf16), -m gpu
#   2. speed: experiments/efficiency/speed_h200.yaml (each switch at 8 x 2048 rows) in one fresh process, then TRL
#      and TRL + Liger on the same samples as its first configuration
#   3. the watch: Gemma 3 270M (real weights) mix_watch at 1:1 and 1:0, seed 0, training only, side by side
#   4. eval memory: the 270M base on the medical eval sets at batch 16 with eval.scorer=continuation and =hflm,
#      side by side (their predictions are compared here with the committed experiments/results/mix_sweep/base)
# Data preparation and the GGUF conversion (CPU) run during step 2, niced.
# One bundle (wheels, raw data, tokenizer, GGUF), staged here with
#   ../shared/tools/device-stage.sh /tmp/b6 --part-mib 58      # /tmp/b6: wheels/, data.tar.xz, tok.tar.xz, *.gguf
# then, in back-to-back calls (the machine forgets /root 30 s after a call):
#   bash experiments/gpu/speed_watch_h200.sh stage N        # N = 1..6, carry [".stage/pN"]
#   bash experiments/gpu/speed_watch_h200.sh setup          # unpack, install, start the driver in the background
#   bash experiments/gpu/speed_watch_h200.sh wait 560       # until "all done"; $OUT/speed_watch.tar.gz each time
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/runs B=/root/tmp/b6
GGUF=$B/gemma-3-270m-q4_k_m.gguf
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=$RUNS
export MEDTUNE_DATA_DIR=/root/data HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4

timed() {  # name limit_s command...: its log in $RUNS/<name>.log, its exit status and wall time in rc.txt
  local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}

runs() {
  cd "$SRC" && date -u +%FT%TZ > "$RUNS/started"
  timed gpu_tests 300 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/models/test_varlen_attention.py
  attention=()  # if the flash varlen kernel failed its tests, everything else runs on flex
  grep -q "^gpu_tests rc=0" "$RUNS/rc.txt" || attention=(packing.attention=flex)
  ( nice -n 15 python3 -m medtune.data prepare --sources kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa \
      pubmedqa mmlu chatdoctor_en medquad > "$RUNS/prepare.log" 2>&1
    nice -n 15 python3 -m medtune.models convert --gguf "$GGUF" > "$RUNS/convert.log" 2>&1
    echo "prepare+convert rc=$? ended=$(date -u +%T)" >> "$RUNS/rc.txt" ) &
  local prep=$!
  timed bench 1100 python3 -m medtune.bench --config experiments/efficiency/speed_h200.yaml --warmup 3 --steps 10 \
    --out "$RUNS/bench" --peers trl,trl_liger --peer-config varlen_liger_bf16 --peer-timeout-s 300
  wait "$prep"
  W=(+experiment=mix_watch "model.path=$GGUF" logger=jsonl eval.sanity=warn stage=train seed=0 "${attention[@]}")
  timed watch_1-1 900 python3 -m medtune.train "${W[@]}" "data_mix.ratio='1:1'" hydra.run.dir=$RUNS/mix_watch/1-1 &
  sleep 5
  timed watch_1-0 900 python3 -m medtune.train "${W[@]}" "data_mix.ratio='1:0'" hydra.run.dir=$RUNS/mix_watch/1-0 &
  wait
  E=(+experiment=mix_sweep "model.path=$GGUF" logger=jsonl eval.batch_size=16 eval.sanity=warn eval.cache_base=false)
  timed eval_continuation 600 python3 -m medtune.evaluate "${E[@]}" eval.scorer=continuation \
    hydra.run.dir=$RUNS/eval/continuation &
  sleep 5
  timed eval_hflm 600 python3 -m medtune.evaluate "${E[@]}" eval.scorer=hflm hydra.run.dir=$RUNS/eval/hflm &
  wait
  touch "$RUNS/ALL_DONE"
}

collect() {
  cd /root && find runs -name "*.log" -size -20M -exec gzip -kf {} \;
  cp /root/versions.txt runs/ 2>/dev/null
  tar --exclude='*.safetensors' --exclude='*/checkpoints/*' --exclude='*.log' --exclude='*/hf_cache/*' \
    --exclude='*/peers/model-*' --exclude='samples.jsonl' --exclude='*/tasks/*' -czf "$OUT/speed_watch.tar.gz" runs
  ls -la "$OUT"
}

case "${1:-}" in
  stage) stage_part "$2" ;;
  setup)  # carry [".stage/SHA256"] too: the parts are checked against it
    set -e
    unpack_bundle
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site \
      $B/wheels/*.whl
    mkdir -p /root/data /root/tok && tar -xJf $B/data.tar.xz -C /root/data && tar -xJf $B/tok.tar.xz -C /root/tok
    rm -rf "$SRC" "$RUNS" && mkdir -p "$SRC" "$RUNS" && cp -r medtune experiments tests pyproject.toml "$SRC/"
    cd "$SRC"
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, transformers, peft, bitsandbytes, lm_eval, trl, liger_kernel, triton, hydra; \
print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, \
'| bitsandbytes', bitsandbytes.__version__, '| lm_eval', lm_eval.__version__, '| trl', trl.__version__, \
'| liger', liger_kernel.__version__ if hasattr(liger_kernel, '__version__') else '0.8.5', '| triton', \
triton.__version__, '| hydra', hydra.__version__)"; } | tee /root/versions.txt
    set +e  # the driver outlives this call: it runs from the copy in $SRC
    start_driver "$SRC/experiments/gpu/speed_watch_h200.sh"
    sleep 30
    bash "$0" wait "${2:-400}" ;;
  runs) runs ;;
  wait)
    wait_done "$RUNS" "${2:-560}"
    echo "== $(date -u +%T) started $(cat "$RUNS/started" 2>/dev/null)"; cat "$RUNS/rc.txt" 2>/dev/null
    tail -3 /root/driver.log
    for f in "$RUNS"/*.log; do echo "-- $f"; grep -a "passed\|failed\|INFO medtune.bench: \|watch/\|step \|Error" "$f" \
      | cut -c1-400 | tail -4; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running"
    collect > /dev/null ;;
  collect) collect ;;
  *) echo "usage: $0 stage N | setup | wait [s] | collect" >&2; exit 2 ;;
esac
