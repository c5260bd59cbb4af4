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
runs_env /root
B=/root/tmp/b6 GGUF=/root/tmp/b6/gemma-3-270m-q4_k_m.gguf

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

collect() { tar_runs runs speed_watch; }

case "${1:-}" in
  stage) stage_part "$2" ;;
  setup)  # carry [".stage/SHA256"] too: the parts are checked against it
    setup_and_start "$B" experiments/gpu/speed_watch_h200.sh "${2:-400}" \
      torch transformers peft bitsandbytes lm_eval trl liger_kernel triton hydra ;;
  runs) runs ;;
  wait)
    wait_header "${2:-560}"
    for f in "$RUNS"/*.log; do echo "-- $f"; grep -a "passed\|failed\|INFO medtune.bench: \|watch/\|step \|Error" "$f" \
      | cut -c1-400 | tail -4; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    wait_footer runs speed_watch ;;
  collect) collect ;;
  *) echo "usage: $0 stage N | setup | wait [s] | collect" >&2; exit 2 ;;
esac
