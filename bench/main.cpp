// moe_bench: see moe_bench.cpp and docs/benchmarks.md.
#include "bench_main.h"

int main(int argc, char** argv) { return moe::bench::bench_main(argc, argv); }
