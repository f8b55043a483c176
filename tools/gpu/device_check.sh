#!/usr/bin/env bash
# The GPU check of docs/gpu.md, as one script for a lent GPU machine with PyTorch 2.x + CUDA and
# no Debian packages: configure and build against that LibTorch (with the folder of
# tools/gpu/prepare_deps.sh), run the device table on CUDA, then moe_bench --device cuda on
# G1-G6, each twice: as is, and with the grouped GEMMs (MOE_GROUPED_MM=1). Everything it reports
# goes to $OUT (default out-gpu), 8 files: device.txt, build.log (configure and build),
# test_device.log, test_device_grouped.log, bench.log and .jsonl, bench_grouped.log and .jsonl.
#
#   bash tools/gpu/device_check.sh [DEPS_FOLDER]        # DEPS_FOLDER default .gpu-deps
# Environment: SHAPES (default G2,G4,G5,G6,G1,G3: the large ones last), PASSES (fwd,fwdbwd),
# BENCH_SECONDS (default 120, then 60 for the grouped run: each benchmark stops there, keeping
# the rows it wrote), JOBS (default: all cores). Every step has a time limit, so that the whole
# script ends within about 10 minutes.
set -uo pipefail
deps=$(realpath "${1:-.gpu-deps}")
out=${OUT:-out-gpu}
mkdir -p "$out"
[ -d "$deps/googletest" ] || { echo "no $deps/googletest: run tools/gpu/prepare_deps.sh here and carry the folder"; exit 1; }
export PATH=/usr/local/cuda/bin:$PATH
jobs=${JOBS:-$(nproc)}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -1
  g++ --version | head -1
  command -v cmake ninja nvcc python3
  ls -d /usr/local/cuda* 2>&1
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
zlib=$(ldconfig -p | awk '/libz.so.1 /{print $NF; exit}')
[ -n "$zlib" ] || { echo "no libz.so.1 on this machine"; exit 1; }
generator=Ninja
command -v ninja > /dev/null || generator="Unix Makefiles"
build=build-cuda
t0=$(date +%s)
cmake -S . -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DMOE_GTEST_SOURCE_DIR="$deps/googletest" -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON \
  -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$zlib" \
  -DMOE_BUILD_CLI=OFF -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_PYTHON=OFF > "$out/build.log" 2>&1
configured=$?
tail -5 "$out/build.log"
[ $configured -eq 0 ] || { echo "configure failed (build.log)"; exit 1; }
# -k 0: every compile error of the new LibTorch in one run.
timeout 240 cmake --build "$build" -j "$jobs" --target test_device test_grouped_rows moe_bench -- \
  $([ "$generator" = Ninja ] && echo -k 0) >> "$out/build.log" 2>&1
built=$?
echo "build: exit $built after $(( $(date +%s) - t0 )) s"
grep -E "error|Error" "$out/build.log" | head -40
[ $built -eq 0 ] || exit 1
# Which CUDA runtime the programs load (the toolkit's and PyTorch's must agree).
ldd "$build/tests/test_device" | grep -E "cudart|torch_cuda|c10_cuda" >> "$out/device.txt"

{ timeout 60 "$build/tests/test_grouped_rows"; timeout 120 "$build/tests/test_device"; } \
  > "$out/test_device.log" 2>&1
echo "test_grouped_rows, test_device: exit $?"
grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/test_device.log" | head -40
# Again with the grouped GEMMs (off by default until this has passed; docs/gpu.md).
MOE_GROUPED_MM=1 timeout 120 "$build/tests/test_device" > "$out/test_device_grouped.log" 2>&1
echo "test_device, MOE_GROUPED_MM=1: exit $?"
grep -E "^\[  (PASSED|FAILED) " "$out/test_device_grouped.log" | head -40

timeout "${BENCH_SECONDS:-120}" "$build/bench/moe_bench" --device cuda \
  --shapes "${SHAPES:-G2,G4,G5,G6,G1,G3}" --passes "${PASSES:-fwd,fwdbwd}" \
  --json "$out/bench.jsonl" > "$out/bench.log" 2>&1
echo "moe_bench: exit $?"
cat "$out/bench.log"
# The library with the grouped GEMMs, beside the op itself.
timeout "${BENCH_SECONDS:-60}" env MOE_GROUPED_MM=1 "$build/bench/moe_bench" --device cuda \
  --shapes "${SHAPES:-G2,G4,G5,G6,G1,G3}" --passes "${PASSES:-fwd,fwdbwd}" \
  --impls lib,grouped_mm --json "$out/bench_grouped.jsonl" > "$out/bench_grouped.log" 2>&1
echo "moe_bench, MOE_GROUPED_MM=1: exit $?"
cat "$out/bench_grouped.log"
