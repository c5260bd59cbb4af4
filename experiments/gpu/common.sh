#!/usr/bin/env bash
# Shared steps of the GPU runbooks (sourced: `. "$(dirname "$0")/common.sh"`). The device machine forgets /root 30 s
# after a call and gets a fresh copy of the work tree at every call, at most 64 MiB carried each time.

stage_part() {  # N: copy part N of a bundle split by ../shared/tools/device-stage.sh (carry [".stage/pN"])
  mkdir -p /root/stage && cp ".stage/p$1"/* /root/stage/ && ls -la /root/stage
}

unpack_bundle() {  # join the staged parts, check them against .stage/SHA256 when it was carried, unpack into /root
  cat /root/stage/part* > /root/bundle.tar || return 1
  if [[ -f .stage/SHA256 ]]; then echo "$(cat .stage/SHA256)  /root/bundle.tar" | sha256sum -c || return 1; fi
  tar -xf /root/bundle.tar -C /root/ && rm -rf /root/bundle.tar /root/stage
}

start_driver() {  # SCRIPT [LOG]: `bash SCRIPT runs` in the background, outliving this call (log: /root/driver.log)
  setsid nohup bash "$1" runs > "${2:-/root/driver.log}" 2>&1 < /dev/null &
}

wait_done() {  # DIR SECONDS [PID]: until DIR/ALL_DONE exists, SECONDS pass or (given) process PID is gone
  local end=$((SECONDS + $2))
  while [[ ! -f $1/ALL_DONE ]] && (( SECONDS < end )); do
    [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && break
    sleep 15
  done
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

# SRC, RUNS: where a runbook copies the work tree and writes its runs. A previous call's ALL_DONE on the same machine
# would end `wait` at once: gone before the driver starts.
copy_source() { rm -rf "$SRC" "$RUNS/ALL_DONE" && mkdir -p "$SRC" "$RUNS" && cp -r . "$SRC" && cd "$SRC"; }

begin_runs() {  # in the driver: into the copied source; the start time and the host CPU (a 4-row step is bound by it)
  cd "$SRC" && date -u +%FT%TZ > "$RUNS/started"
  lscpu | grep -m1 "Model name" >> "$RUNS/versions.txt"
}

