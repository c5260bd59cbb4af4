#!/usr/bin/env bash
# GPU runbook: LLaMA 3.3 70B architecture (random weights), nf4 QLoRA, exact packing, through the FSDP code path with
# one rank (`torchrun --nproc-per-node 1 ... sharding=fsdp`), on one GPU. Full width at 2, 4 and 8 decoder layers
# gives the measured per-layer cost; then all 80 layers, which the estimator puts at 43.4 GiB per rank, under one
# H100's 80 GB. This is the one-GPU half of issue 12 (the two-GPU run needs a 2-GPU machine).
#
#   bash experiments/gpu/llama70b_1gpu.sh start        # carry [".whl"]; installs wheels, starts the runs, waits
#   bash experiments/gpu/llama70b_1gpu.sh wait 560     # repeat until "all done"; results in $OUT every time
#
# The runs outlive the call (setsid); the machine forgets everything 30 s after a call, so calls go back to back.
set -uo pipefail
SELF=$(readlink -f "$0")
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
RUNS=/root/runs70 SRC=/root/src70
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=$RUNS
export HF_HUB_OFFLINE=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
LAYERS=${LAYERS:-"2 4 8 80"} STEPS=${STEPS:-10}
COMMON=(model=llama3_3_70b model.init=random quantization=nf4 sharding=fsdp packing=packed packing.max_seq_len=2048
        trainer.micro_batch_size=1 "trainer.max_steps=$STEPS" trainer.log_every=1 trainer.progress_bar=false
        eval=none logger=jsonl data_mix=demo data_mix.upsample=true data_mix.max_repeat=64 packing.split_long=true)

collect() {
  python3 - "$RUNS" "$OUT/llama70b_1gpu.json" <<'PY'
import json, pathlib, sys
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
keys = ("run/status", "run/error", "run/wall_s", "train/loss", "train/useful_tokens_per_s", "train/step_s",
        "train/mfu", "sys/load/peak_alloc_gib", "sys/load/peak_reserved_gib", "sys/train/peak_alloc_gib",
        "sys/train/peak_reserved_gib", "model/trainable_params", "model/params", "packing/efficiency")
res = {}
for d in sorted(runs.glob("layers_*")):
    s = d / "summary.json"
    summary = json.loads(s.read_text()) if s.exists() else {"run/status": "running or no summary"}
    res[d.name] = {k: summary.get(k) for k in keys if k in summary}
    res[d.name]["_all_keys"] = sorted(k for k in summary if k.startswith(("sys/", "train/", "model/")))[:60]
out.write_text(json.dumps(res, indent=1))
print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "_all_keys"} for k, r in res.items()}, indent=1))
PY
  cp "$RUNS"/*.log /root/versions.txt "$OUT/" 2>/dev/null
}

case "${1:-}" in
  start)
    set -e
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl
    rm -rf "$SRC" && mkdir -p "$SRC" "$RUNS" && cp -r medtune pyproject.toml "$SRC/"
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c "import torch, transformers, peft, bitsandbytes; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', bitsandbytes.__version__)"; } | tee /root/versions.txt
    set +e
    cd "$SRC"
    # one after another (each wants the whole GPU); the predictions first, from the same overrides
    setsid nohup bash -c '
      for n in '"$LAYERS"'; do
        python3 -m medtune.memory '"${COMMON[*]}"' model.num_layers=$n world_size=1 > '"$RUNS"'/predict_$n.log 2>&1
        torchrun --nproc-per-node 1 -m medtune.train '"${COMMON[*]}"' model.num_layers=$n \
          hydra.run.dir='"$RUNS"'/layers_$n > '"$RUNS"'/layers_$n.log 2>&1
      done; touch '"$RUNS"'/ALL_DONE' > /root/driver.log 2>&1 < /dev/null &
    sleep 5
    bash "$SELF" wait "${2:-400}" ;;
  wait)
    end=$((SECONDS + ${2:-560}))
    while [[ ! -f $RUNS/ALL_DONE ]] && (( SECONDS < end )); do sleep 15; done
    date -u +%T; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    for f in "$RUNS"/layers_*.log; do echo "-- $f"; grep -a "step \|Error\|error\|peak" "$f" | tail -3; done
    collect
    [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running" ;;
  *) echo "usage: $0 start [wait_s] | wait [s]" >&2; exit 2 ;;
esac
