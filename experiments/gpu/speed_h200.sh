#!/usr/bin/env bash
# GPU runbook for issue 21 on one H200 (kind nvidia-h200):
#   1. explore: each speed switch of experiments/efficiency/speed_h200.yaml, 5 warm-up + 15 timed steps
#   2. final: plain medtune and its fastest 4-row configuration against TRL and TRL + Liger on the same samples,
#      5 + 45 steps (time to the first step and to the 50th for everyone)
#   3. eval memory: Gemma 3 270M shape (random weights, the real 262k vocabulary), train 20 steps then lm-eval on
#      900 medical questions at batch 16, scored by lm-eval's HFLM and by medtune's ContinuationLM
# Bundles (made here, ignored by git): .gpu1/ = bitsandbytes wheel + data.tar.xz, .gpu2/ = the other wheels
# (+ trl, liger-kernel) + tok.tar.xz. Calls, back to back:
#   bash experiments/gpu/speed_h200.sh stage              # carry [".gpu1"]
#   bash experiments/gpu/speed_h200.sh setup_and_start    # carry [".gpu2"]
#   bash experiments/gpu/speed_h200.sh wait 540           # until "all done"; $OUT/speed_h200.tar.gz each time
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/runs
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=$RUNS
export MEDTUNE_DATA_DIR=/root/data HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=8

runs() {
  cd "$SRC"
  timed() { local name=$1 limit=$2; shift 2; local t0=$SECONDS
    timeout "$limit" "$@" > "$RUNS/$name.log" 2>&1; echo "$name rc=$? wall_s=$((SECONDS - t0))" >> "$RUNS/rc.txt"; }
  timed explore 900 python3 -m medtune.bench --config experiments/efficiency/speed_h200.yaml --warmup 5 --steps 15 \
    --out "$RUNS/explore"
  python3 - "$RUNS" <<'PY'
import json, sys, yaml
runs = sys.argv[1]
plan = yaml.safe_load(open("experiments/efficiency/speed_h200.yaml"))
rows = json.load(open(f"{runs}/explore/results.json"))["configurations"]
four = [r for r in rows if r["status"] == "ok" and r["name"].startswith("mb4") and r["name"] != "mb4_offload"]
best = max(four, key=lambda r: r["useful_tokens_per_s"])["name"] if four else "mb4"
final = {"common": plan["common"], "baseline": "mb4",
         "configurations": {"mb4": [], f"best4_{best}": plan["configurations"][best]}}
yaml.safe_dump(final, open(f"{runs}/final_plan.yaml", "w"))
print("fastest 4-row configuration:", best)
PY
  timed final 1200 python3 -m medtune.bench --config "$RUNS/final_plan.yaml" --warmup 5 --steps 45 \
    --out "$RUNS/final" --peers trl,trl_liger --peer-config mb4 --peer-timeout-s 900
  E=(+experiment=mix_10_3 model=gemma3_270m_random model.tokenizer=/root/tok/tok trainer.max_steps=20
     data_mix.budget=300000 eval.limit=100 eval.batch_size=16 eval.cache_base=false logger=jsonl
     trainer.progress_bar=false)
  timed eval_continuation 600 python3 -m medtune.train "${E[@]}" eval.scorer=continuation \
    hydra.run.dir=$RUNS/eval_continuation
  timed eval_hflm 600 python3 -m medtune.train "${E[@]}" eval.scorer=hflm hydra.run.dir=$RUNS/eval_hflm
  touch "$RUNS/ALL_DONE"
}

collect() {
  cd /root && find runs -name "*.log" -exec gzip -kf {} \;
  tar --exclude='*.safetensors' --exclude='*/checkpoints/*' --exclude='*.log' --exclude='*/hf_cache/*' \
    --exclude='*/peers/model-*' --exclude='samples.jsonl' -czf "$OUT/speed_h200.tar.gz" runs versions.txt 2>/dev/null
  ls -la "$OUT"
}

case "${1:-}" in
  stage)
    mkdir -p /root/stage && cp .gpu1/* /root/stage/ && ls -la /root/stage
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader ;;
  setup_and_start)
    set -e
    cp .gpu2/* /root/stage/
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site \
      /root/stage/*.whl
    mkdir -p /root/data /root/tok && tar -xJf /root/stage/data.tar.xz -C /root/data
    tar -xJf /root/stage/tok.tar.xz -C /root/tok
    rm -rf "$SRC" "$RUNS" && mkdir -p "$SRC" "$RUNS" && cp -r medtune conf experiments tests pyproject.toml "$SRC/"
    cd "$SRC"
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, transformers, peft, bitsandbytes, lm_eval, trl, liger_kernel, triton; print('torch', \
torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', \
bitsandbytes.__version__, '| lm_eval', lm_eval.__version__, '| trl', trl.__version__, '| triton', triton.__version__)"; } \
      | tee /root/versions.txt
    python3 -m medtune.data prepare --sources kormedmcqa kormed_law genmedgpt_ko medqa_4opt medmcqa pubmedqa mmlu \
      chatdoctor_en medquad 2>&1 | tail -2
    set +e  # the runs outlive this call: they run from the copy in $SRC
    setsid nohup bash "$SRC/experiments/gpu/speed_h200.sh" runs > /root/driver.log 2>&1 < /dev/null &
    sleep 20
    bash "$0" wait "${2:-420}" ;;
  runs) runs ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    while [[ ! -f $RUNS/ALL_DONE ]] && (( SECONDS < end )); do sleep 15; done
    date -u +%T; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    cat "$RUNS/rc.txt" 2>/dev/null; tail -3 /root/driver.log
    for f in "$RUNS"/*.log; do echo "-- $f"; grep -a "INFO medtune.bench: \|peer \|lm-eval scored\|Error\|error" "$f" \
      | cut -c1-400 | tail -8; done
    collect
    [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running" ;;
  *) echo "usage: $0 stage | setup_and_start [wait_s] | wait [wait_s]" >&2; exit 2 ;;
esac
