#!/usr/bin/env bash
# One device-machine call: GPU correctness tests, then the fused-op benchmarks for the given families.
#   bash benchmarks/gpu_batch.sh TESTS|BENCH [args...]   (writes logs and JSON under $OUT)
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
what=$1; shift
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" >> "$OUT/device.txt"
cat "$OUT/device.txt"
case "$what" in
  TESTS)
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" "$@" \
      --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -60 ;;
  BENCH)
    timeout "${BENCH_TIMEOUT:-540}" python3 -m benchmarks.ops "$@" --out "$OUT/ops.json" 2>&1 | tee "$OUT/bench.log" | tail -80 ;;
  *) echo "usage: gpu_batch.sh TESTS|BENCH ..."; exit 2 ;;
esac
