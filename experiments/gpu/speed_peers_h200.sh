#!/usr/bin/env bash
# GPU runbook for issue 21 on one H200 (kind nvidia-h200): medtune's speed switches, each configuration of
# experiments/efficiency/speed_h200.yaml in its own fresh process, against TRL + Liger and unsloth on the same
# samples, unsloth in an environment of its own (it pins transformers <= 5.17, trl <= 1.15, datasets < 5: the image's
# transformers 5.17 and peft, plus its wheels in /root/site_unsloth). Back-to-back calls (64 MiB each; the machine
# forgets /root 30 s after a call):
#   bash experiments/gpu/speed_peers_h200.sh install .gpu4     # carry [".gpu4"]: lm-eval and its dependencies
#   bash experiments/gpu/speed_peers_h200.sh unsloth .gpu5     # carry [".gpu5"]: unsloth 2026.10.9, unsloth_zoo,
#                                                              # torchao, cut_cross_entropy, tyro, trl 1.15, datasets 4
#   bash experiments/gpu/speed_peers_h200.sh start             # carry [".gpu3"]: medtune's wheels; checks that both
#                                                              # environments import, starts the driver, waits
#   bash experiments/gpu/speed_peers_h200.sh wait 560          # until ALL_DONE; $OUT/speed_peers.tar.gz each time
# .gpu5 is made here with `pip download --no-deps` of the wheels named above (42 MB). As run on 2026-11-30: .gpu3's
# bitsandbytes wheel (42 MB) went into .gpu6 and its own `install .gpu6` call first, as the work tree had grown.
# Without unsloth (a later, shorter call): `install .gpu6`, then `install .gpu3 .gpu4 && run CONFIG ...` (in the
# call; no peers when /root/site_unsloth is absent).
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=/root/src RUNS=/root/peers USITE=/root/site_unsloth
export PYTHONPATH=/root/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
export UNSLOTH_DISABLE_STATISTICS=1 HF_DATASETS_OFFLINE=1  # no network on the machine: never wait for one
# SPEED_CONFIGS="a b" and SPEED_PEERS="a=unsloth b=trl_liger,unsloth" (exported into `start`) replace these
read -ra CONFIGS <<< "${SPEED_CONFIGS:-fast prev fast_addmm fast_hooks fast_mb4 prev_mb4}"
declare -A PEERS=()
for pair in ${SPEED_PEERS:-fast=trl_liger,unsloth fast_mb4=unsloth}; do PEERS[${pair%%=*}]=${pair#*=}; done
PEER_TIMEOUT_S=${PEER_TIMEOUT_S:-420}  # unsloth's cold compile of an 8-row step took longer than 420 s

bench() {  # CONFIG: its own process; the peers named for it run beside it on its samples
  local c=$1 t0=$SECONDS peers=()
  one_config_plan "$c" "$RUNS/$c.yaml"
  [[ -n ${PEERS[$c]:-} ]] && peers=(--peers "${PEERS[$c]}" --peer-config "$c" --peer-env "unsloth=$USITE")
  timeout 900 python3 -m medtune.bench --config "$RUNS/$c.yaml" --warmup 3 --steps 10 --out "$RUNS/$c" "${peers[@]}" \
    --peer-timeout-s "$PEER_TIMEOUT_S" > "$RUNS/$c.log" 2>&1
  echo "$c rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}


runs() {
  begin_runs
  [[ -d $USITE ]] || PEERS=()
  for c in "${CONFIGS[@]}"; do bench "$c"; done
  gpu_tests "$RUNS"
  touch "$RUNS/ALL_DONE"
}

collect() {
  cat "$RUNS/rc.txt" 2>/dev/null; grep -h "^| \(fast\|prev\|peer\)" "$RUNS"/*/results.md 2>/dev/null
  tail -3 /root/driver.log
  cd /root && tar -czf "$OUT/speed_peers.tar.gz" --exclude='*/peers/model-*' --exclude='samples.jsonl' \
    --exclude='*.trainer' peers
}

case "${1:-}" in
  install) shift; for d in "$@"; do pip_target /root/site "$d"/*.whl || exit 1; done ;;
  run) shift; (( $# )) && CONFIGS=("$@"); copy_source || exit 1; runs; collect ;;
  unsloth) pip_target "$USITE" "$2"/*.whl ;;
  start)
    pip_target /root/site .gpu3/*.whl || exit 1
    if [[ -d .gpu4 ]]; then pip_target /root/site .gpu4/*.whl || exit 1; fi  # carried along: one call fewer
    # bitsandbytes, dill and multiprocess come with medtune's wheels; unsloth's environment needs them too
    cp -r /root/site/bitsandbytes* /root/site/dill* /root/site/multiprocess* "$USITE"/
    copy_source || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RUNS/versions.txt"
    python3 -c "import torch, transformers, peft, bitsandbytes, trl, liger_kernel; print('medtune env: torch', \
torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| bitsandbytes', \
bitsandbytes.__version__, '| trl', trl.__version__)" 2>&1 | tail -1 | tee -a "$RUNS/versions.txt"
    PYTHONPATH=$USITE:$SRC python3 -c "import unsloth, transformers, trl, peft, datasets; print('unsloth env: \
unsloth', unsloth.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', \
peft.__version__, '| datasets', datasets.__version__)" 2>&1 | tail -3 | tee -a "$RUNS/versions.txt"
    start_driver "$SRC/experiments/gpu/speed_peers_h200.sh"
    wait_done "$RUNS" 420; collect ;;
  runs) runs ;;
  wait) wait_done "$RUNS" "${2:-560}"; collect ;;
  *) echo "usage: $0 install DIR... | unsloth DIR | start | wait [SECONDS] | run [CONFIG ...]" >&2; exit 2 ;;
esac
