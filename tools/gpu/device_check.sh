#!/usr/bin/env bash
# The GPU check of docs/gpu.md, as one script for a lent GPU machine with PyTorch 2.x + CUDA and
# no Debian packages: configure and build against that LibTorch (with the folder of
# tools/gpu/prepare_deps.sh), run the device table on CUDA, then moe_bench --device cuda on
# G1-G6. Everything it reports goes to $OUT (default out-gpu): device.txt, configure.log,
# build.log, test_device.log and .xml, bench.log, bench.jsonl.
#
#   bash tools/gpu/device_check.sh [DEPS_FOLDER]        # DEPS_FOLDER default .gpu-deps
# Environment: SHAPES (default G2,G4,G5,G6,G1,G3: the large ones last), PASSES (fwd,fwdbwd),
# BENCH_SECONDS (default 300: the benchmark stops there), JOBS (default: all cores).
set -uo pipefail
deps=$(realpath "${1:-.gpu-deps}")
out=${OUT:-out-gpu}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
jobs=${JOBS:-$(nproc)}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nvcc --version | tail -1
  g++ --version | head -1
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
generator=Ninja
command -v ninja > /dev/null || generator="Unix Makefiles"
build=build-cuda
t0=$(date +%s)
cmake -S . -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps" -DMOE_GTEST_SOURCE_DIR="$deps/googletest" -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON \
  -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$(ldconfig -p | awk '/libz.so.1 /{print $NF; exit}')" \
  -DMOE_BUILD_CLI=OFF -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_PYTHON=OFF > "$out/configure.log" 2>&1
configured=$?
tail -5 "$out/configure.log"
[ $configured -eq 0 ] || { echo "configure failed (configure.log)"; exit 1; }
# -k 0: every compile error of the new LibTorch in one run.
cmake --build "$build" -j "$jobs" --target test_device moe_bench -- $([ "$generator" = Ninja ] && echo -k 0) \
  > "$out/build.log" 2>&1
built=$?
echo "build: exit $built after $(( $(date +%s) - t0 )) s"
grep -E "error|Error" "$out/build.log" | head -40
[ $built -eq 0 ] || exit 1

"$build/tests/test_device" --gtest_output="xml:$out/test_device.xml" > "$out/test_device.log" 2>&1
echo "test_device: exit $?"
grep -E "^\[  (PASSED|FAILED|SKIPPED) " "$out/test_device.log" | head -40

timeout "${BENCH_SECONDS:-300}" "$build/bench/moe_bench" --device cuda \
  --shapes "${SHAPES:-G2,G4,G5,G6,G1,G3}" --passes "${PASSES:-fwd,fwdbwd}" \
  --json "$out/bench.jsonl" > "$out/bench.log" 2>&1
echo "moe_bench: exit $?"
cat "$out/bench.log"
