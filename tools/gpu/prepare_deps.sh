#!/usr/bin/env bash
# Copies what a CUDA build needs beside LibTorch into one folder (default .gpu-deps, ignored by
# git), for a machine that has PyTorch with CUDA but not the Debian packages of `make deps`:
# nlohmann json's headers and CMake package, zlib's headers, GoogleTest's sources. Run it here,
# then carry the folder to the GPU machine, where tools/gpu/device_check.sh builds against it
# (docs/gpu.md, "Building against a CUDA LibTorch").
set -euo pipefail
out=${1:-.gpu-deps}
rm -rf "$out"
mkdir -p "$out/include" "$out/share/cmake"
cp -r /usr/include/nlohmann "$out/include/"
cp -r /usr/share/cmake/nlohmann_json "$out/share/cmake/"
cp /usr/include/zlib.h /usr/include/zconf.h "$out/include/"
cp -r /usr/src/googletest "$out/googletest"
du -sh "$out"
