#!/usr/bin/env bash
# One device-machine call: GPU correctness tests, then the fused-op benchmarks for the given families.
#   bash benchmarks/gpu_batch.sh TESTS|BENCH [args...]   (writes logs and JSON under $OUT)
#   bash benchmarks/gpu_batch.sh TILELANG                 (issue #6: carry .gpu; ~4 min; 7 files under $OUT)
#   bash benchmarks/gpu_batch.sh E2E [e2e args...]        (issue #7: <= 8 min; e2e.json/.md/.png|.svg/.log under $OUT)
#   bash benchmarks/gpu_batch.sh WRITERS [bench args]     (issue #6, CUDA KV writers: ~2.5 min; writers*.{log,xml,json} under $OUT)
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
  TILELANG)
    # TileLang mHC providers: unpack the packed site (.gpu/site.tar.xz, from ../shared/tools/gpu-site.sh),
    # compile every kernel in parallel once (TileLang's disk cache serves the later processes), run the
    # TileLang GPU tests, then measure the Triton/TileLang crossover table (kernels/mhc_pre/crossover.py).
    site=$(mktemp -d) && tar xJf .gpu/site.tar.xz -C "$site" && export PYTHONPATH="$site:$PYTHONPATH"
    python3 -c "import tilelang; print('tilelang', tilelang.__version__)" >> "$OUT/device.txt" 2>&1
    timeout "${PREWARM_TIMEOUT:-75}" python3 -m benchmarks.mhc_crossover --prewarm-only 2>&1 | tee "$OUT/tilelang_prewarm.log" | tail -5
    timeout "${TEST_TIMEOUT:-65}" python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -k tilelang --maxfail=15 \
      tests/kernels/test_mhc_tilelang.py tests/kernels/test_mhc_pre.py tests/kernels/test_mhc_post.py \
      tests/kernels/test_mhc_post_pre.py --junitxml="$OUT/tilelang_tests.xml" 2>&1 | tee "$OUT/tilelang_tests.log" | tail -40
    timeout "${BENCH_TIMEOUT:-100}" python3 -m benchmarks.mhc_crossover --no-prewarm --budget-s "${BENCH_BUDGET:-80}" \
      --out "$OUT/crossover_h200.json" --raw "$OUT/crossover_raw.json" 2>&1 | tee "$OUT/crossover.log" | tail -60 ;;
  E2E)
    # End-to-end benchmark (issue #7), one slot of <= 8 min: token counts in priority order (decode T=1
    # and its fusable part = the decode goal, prefill 4096 = the prefill goal, then decode 64 and 8);
    # what does not fit --time-budget is skipped with the reason, results are written after every layer
    # (a kill at the timeout keeps them). E2E_T=16384 for the larger prefill in a slot of its own; merge
    # the JSON files with `python3 -m benchmarks.plot a.json b.json --markdown m.md --plot p.png`.
    export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}  # no pool of compile workers
    export FUSEGRAPH_COMMIT=${FUSEGRAPH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
    timeout -k 15 "${E2E_TIMEOUT:-440}" python3 -m benchmarks.e2e --T "${E2E_T:-1,4096,64,8}" \
      --time-budget "${E2E_BUDGET:-380}" --pdl-max-T 64 --case-budget 12 \
      --out "$OUT/e2e.json" --markdown "$OUT/e2e.md" --plot "$OUT/e2e.png" "$@" > "$OUT/e2e.log" 2>&1
    echo "e2e exit $?"
    if grep -q '^Per layer' "$OUT/e2e.log"; then grep -v '^[EWI][0-9]\{4\} ' "$OUT/e2e.log" | grep -A400 '^Per layer' | head -150
    else grep -v '^[EWI][0-9]\{4\} ' "$OUT/e2e.log" | tail -60; fi ;;
  WRITERS)
    # CUDA KV writers (issue #6), ~2.5 min: build the writers' shared JIT extension once (cached on disk
    # for the two processes after it), run the writers' GPU tests (Triton and CUDA, every instantiated
    # task shape / cache hint / grid, bytes against the reference), then the benchmark: Triton vs CUDA
    # defaults at 1..16384 rows, the launch-variant sweep at 16384 (and a subset at 4096), a same-size
    # copy per (op, rows), a confirmation round; % of copy bandwidth and the DISPATCH / PROGRAMS lines
    # to paste (the summary at the end of writers.log). BENCH_BUDGET caps the benchmark's cases; extra
    # arguments go to the benchmark (e.g. --exclude cuda_tma).
    ( time timeout "${BUILD_TIMEOUT:-100}" python3 -c "import torch; from fusegraph.kernels import _kv_writers as kw; \
kw.jit.load(kw.SPEC, torch.device('cuda')); d = torch.device('cuda'); print('kv_writers extension built:', kw.jit.build_dir(kw.SPEC, *kw.jit.arch_of(d)))" ) \
      > "$OUT/writers_build.log" 2>&1
    tail -4 "$OUT/writers_build.log"
    timeout "${TEST_TIMEOUT:-90}" python3 -m pytest -q -m gpu -p no:cacheprovider -o addopts="" \
      tests/kernels/test_cuda_writers.py tests/kernels/test_set_mla_kv_buffer.py tests/kernels/test_store_fp8_paged.py \
      --junitxml="$OUT/writers_tests.xml" 2>&1 | tee "$OUT/writers_tests.log" | tail -25
    timeout -k 10 "${BENCH_TIMEOUT:-85}" python3 -m benchmarks.ops_hopper --budget-s "${BENCH_BUDGET:-60}" \
      --out "$OUT/writers.json" "$@" > "$OUT/writers.log" 2> "$OUT/writers_progress.log"
    echo "benchmark exit $?"; tail -3 "$OUT/writers_progress.log"
    sed -n '/^copy bandwidth (2 GiB/,$p' "$OUT/writers.log" ;;
  *) echo "usage: gpu_batch.sh TESTS|BENCH|TILELANG|E2E|WRITERS ..."; exit 2 ;;
esac
