#!/usr/bin/env bash
# Shared steps of the GPU runbooks (sourced: `. "$(dirname "$0")/common.sh"`). The device machine forgets /root 30 s
# after a call and gets a fresh copy of the work tree at every call, at most 64 MiB carried each time.

runs_env() {  # ROOT: a runbook's places and environment, all under ROOT (/root on the device machine): the tree's
  # copy in ROOT/src, the runs in ROOT/runs, wheels in ROOT/site, caches in ROOT/cache, raw data in ROOT/data
  ROOT=$1 SRC=$1/src RUNS=$1/runs
  export PYTHONPATH=$1/site:$SRC PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=$1/cache MEDTUNE_RUNS_DIR=$RUNS
  export MEDTUNE_DATA_DIR=$1/data HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4 WANDB_MODE=disabled
}

stage_part() {  # N: copy part N of a bundle split by ../shared/tools/device-stage.sh (carry [".stage/pN"])
  mkdir -p /root/stage && cp ".stage/p$1"/* /root/stage/ && ls -la /root/stage
}

unpack_bundle() {  # join the staged parts, check them against .stage/SHA256 when it was carried, unpack into /root
  cat /root/stage/part* > /root/bundle.tar || return 1
  if [[ -f .stage/SHA256 ]]; then echo "$(cat .stage/SHA256)  /root/bundle.tar" | sha256sum -c || return 1; fi
  tar -xf /root/bundle.tar -C /root/ && rm -rf /root/bundle.tar /root/stage
}

setup_bundle() {  # B: unpack the staged bundle (under /root/B), install B/wheels, B/data.tar.xz into /root/data and
  # B/tok.tar.xz into /root/tok (the layout speed_watch_h200.sh and watch_overhead.sh stage)
  unpack_bundle && pip_target /root/site "$1"/wheels/*.whl && mkdir -p /root/data /root/tok \
    && tar -xJf "$1/data.tar.xz" -C /root/data && tar -xJf "$1/tok.tar.xz" -C /root/tok
}

timed() {  # NAME LIMIT_S COMMAND...: its log in $RUNS/NAME.log, its exit status and wall time in $RUNS/rc.txt
  local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name rc=$? wall_s=$((SECONDS - t0)) ended=$(date -u +%T)" >> "$RUNS/rc.txt"
}

start_driver() {  # SCRIPT [VERB]: `bash SCRIPT VERB` (default runs) in the background, outliving this call (log:
  # $DRIVER_LOG if set, else ROOT/driver.log, ROOT/driver_VERB.log for another verb)
  setsid nohup bash "$1" "${2:-runs}" > "${DRIVER_LOG:-${ROOT:-/root}/driver${2:+_$2}.log}" 2>&1 < /dev/null &
}

wait_done() {  # DIR SECONDS [PID]: until DIR/ALL_DONE exists, SECONDS pass or (given) process PID is gone
  local end=$((SECONDS + $2))
  while [[ ! -f $1/ALL_DONE ]] && (( SECONDS < end )); do
    [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && break  # the driver (PID) is gone
    sleep "${WAIT_POLL_S:-15}"
  done
}

wait_footer() {  # DIR NAME: whether the driver is done, then tar_runs DIR NAME quietly (each wait brings it back)
  [[ -f $RUNS/ALL_DONE ]] && echo "all done" || echo "still running"
  tar_runs "$1" "$2" > /dev/null
}

versions() {  # MODULE...: the GPU and each module's version, into /root/versions.txt and the call's output
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 - "$@" <<'PY'
import importlib, importlib.metadata, sys
def version(name):
    return getattr(importlib.import_module(name), "__version__", None) or importlib.metadata.version(name)
print(" | ".join(f"{name} {version(name)}" for name in sys.argv[1:]))
PY
  } | tee "${ROOT:-/root}/versions.txt"
}

setup_and_start() {  # B SCRIPT SECONDS MODULE...: setup_bundle B, a fresh copy of the tree, the versions of the
  # modules; then SCRIPT's driver from the copy (it outlives the call) and SCRIPT's wait for SECONDS
  setup_bundle "$1" && rm -rf "$RUNS" && copy_source && versions "${@:4}" || return 1
  start_driver "$SRC/$2"; sleep 30; bash "$SRC/$2" wait "$3"
}

wait_header() {  # SECONDS: until $RUNS/ALL_DONE or SECONDS pass; then the start, rc.txt and the driver's last lines
  wait_done "$RUNS" "$1"
  echo "== $(date -u +%T) started $(cat "$RUNS/started" 2>/dev/null)"; cat "$RUNS/rc.txt" 2>/dev/null
  tail -3 "${ROOT:-/root}/driver.log"
}

tar_runs() {  # DIR NAME: $OUT/NAME.tar.gz of ROOT/DIR, its logs gzipped, without weights, checkpoints, per-sample files
  cd "${ROOT:-/root}" && find "$1" -name "*.log" -size -20M -exec gzip -kf {} \;
  cp versions.txt "$1/" 2>/dev/null
  tar --exclude='*.safetensors' --exclude='*/checkpoints/*' --exclude='*.log' --exclude='*/hf_cache/*' \
    --exclude='*/peers/model-*' --exclude='samples.jsonl' --exclude='*/tasks/*' -czf "$OUT/$2.tar.gz" "$1"
  ls -la "$OUT"
}

one_config_plan() {  # NAME OUT: experiments/efficiency/speed_h200.yaml's common overrides and configuration NAME alone
  python3 - "$1" "$2" <<'PY'
import sys, yaml
plan = yaml.safe_load(open("experiments/efficiency/speed_h200.yaml"))
name, out = sys.argv[1], sys.argv[2]
yaml.safe_dump({"common": plan["common"], "baseline": name, "configurations": {name: plan["configurations"][name]}},
               open(out, "w"))
PY
}

pip_target() {  # DIR WHEEL...: install wheels into DIR (no index on the machine, no dependencies resolved)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "${@:2}"
}

gpu_tests() {  # RUNS: medtune's GPU tests of the kernels its defaults run; log and rc into RUNS
  timeout 300 python3 -m pytest -q -s -m gpu -p no:cacheprovider tests/models/test_varlen_attention.py \
    tests/models/test_fused_lora.py tests/models/test_dequant.py tests/models/test_kernels.py \
    tests/training/test_ce_kernel.py tests/training/test_offload.py > "$1/gpu_tests.log" 2>&1
  echo "gpu_tests rc=$? ended=$(date -u +%T)" >> "$1/rc.txt"
}

stop_driver() {  # the background driver and every medtune process it started (`timeout` gives each its own group)
  pkill -f "bash .*experiments/gpu/.*\.sh runs$"; pkill -f "python3 -m medtune\."; pkill -f "_peer\.py|bench\.peers"
}

# [PATH...]: the work tree (or only PATHs of it) into SRC, then into SRC; RUNS made. A previous call's ALL_DONE on the
# same machine would end `wait` at once: gone before the driver starts.
copy_source() { rm -rf "$SRC" "$RUNS/ALL_DONE" && mkdir -p "$SRC" "$RUNS" && cp -r "${@:-.}" "$SRC" && cd "$SRC"; }

begin_runs() {  # in the driver: into the copied source; the start time and the host CPU (a 4-row step is bound by it)
  cd "$SRC" && date -u +%FT%TZ > "$RUNS/started"
  lscpu | grep -m1 "Model name" >> "$RUNS/versions.txt"
}

