// moe_bench's command line (bench_options.h).
#include "bench_options.h"

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "layer_bench.h"
#include "workload.h"

namespace moe::bench {
namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

}  // namespace

void usage() {
  std::printf(
      "moe_bench: the library vs naive loop, GShard dense dispatch and the dense-equivalent GEMMs\n"
      "  --quick              C0, uniform, fp32, fwd + fwdbwd, 3 rounds (the smoke test)\n"
      "  --shapes C0,C1,...   shapes of docs/benchmarks.md (default: C0..C5)\n"
      "  --dists LIST         balanced, uniform, skewed (default: uniform)\n"
      "  --dtypes LIST        fp32, bf16 (default: fp32)\n"
      "  --passes LIST        fwd, fwdbwd (default: both)\n"
      "  --impls LIST         lib, naive, dense_dispatch, dense_equiv (default: these four), and\n"
      "                       lib_recompute (lib with recompute_hidden: less memory, more GEMMs)\n"
      "  --tokens T           override the token count of every shape (e.g. 256 for small-T "
      "latency)\n"
      "  --rounds N           timed rounds, interleaved, median reported (default 5)\n"
      "  --warmup N           untimed rounds first (default 2)\n"
      "  --threads N          intra-op threads (default: all cores)\n"
      "  --json FILE          also write one JSON object per measurement\n"
      "  --no-check           skip the correctness gate\n"
      "  --layers LIST        instead: whole layers with many small experts, training fwd + bwd:\n"
      "                       F256, F1024, F4096 (noisy top-4), H16x16, H32x32, H64x64\n"
      "                       (hierarchical top-2 x top-2), or 'many' for all six\n"
      "  --no-naive           with --layers: skip the naive per-expert loop\n"
      "  --no-block-cache     leave the CPU allocator as it is (moe/runtime.h)\n"
      "  --device DEV         the device harness on DEV (cuda, cuda:1, cpu; docs/gpu.md): lib,\n"
      "                       naive, grouped_mm (torch._grouped_mm, where the LibTorch has it),\n"
      "                       dense_equiv; defaults G1..G6, bf16, all four\n");
}

Options parse(int argc, char** argv) {
  Options o;
  bool shapes_given = false, dtypes_given = false, impls_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") {
      o.shapes = {"C0"};
      o.rounds = 3;
      o.warmup = 1;
    } else if (a == "--shapes") {
      o.shapes = split(next());
      shapes_given = true;
    } else if (a == "--dists")
      o.dists = split(next());
    else if (a == "--dtypes") {
      o.dtypes = split(next());
      dtypes_given = true;
    } else if (a == "--passes")
      o.passes = split(next());
    else if (a == "--impls") {
      o.impls = split(next());
      impls_given = true;
    } else if (a == "--tokens")
      o.tokens = std::stoll(next());
    else if (a == "--rounds")
      o.rounds = std::stoi(next());
    else if (a == "--warmup")
      o.warmup = std::stoi(next());
    else if (a == "--threads")
      o.threads = std::stoi(next());
    else if (a == "--seed")
      o.seed = std::stoull(next());
    else if (a == "--json")
      o.json = next();
    else if (a == "--no-check")
      o.check = false;
    else if (a == "--layers") {
      o.layers = split(next());
      if (o.layers == std::vector<std::string>{"many"})
        o.layers = {"F256", "F1024", "F4096", "H16x16", "H32x32", "H64x64"};
    } else if (a == "--no-naive")
      o.naive_layers = false;
    else if (a == "--no-block-cache")
      o.block_cache = false;
    else if (a == "--device")
      o.device = next();
    else if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + a + "' (see --help)");
    }
  }
  if (!o.device.empty()) {
    try {
      c10::Device device(o.device);
    } catch (const c10::Error&) {
      throw std::invalid_argument("--device '" + o.device +
                                  "' is not a device (cuda, cuda:1, cpu)");
    }
    if (!shapes_given) o.shapes = {"G1", "G2", "G3", "G4", "G5", "G6"};
    if (!dtypes_given) o.dtypes = {"bf16"};
    if (!impls_given) o.impls = {"lib", "naive", "grouped_mm", "dense_equiv"};
    for (const auto& m : o.impls)
      if (m != "lib" && m != "naive" && m != "grouped_mm" && m != "dense_equiv")
        throw std::invalid_argument("unknown impl '" + m +
                                    "' for --device (lib, naive, grouped_mm, dense_equiv)");
    if (!o.layers.empty()) throw std::invalid_argument("--layers runs on the CPU harness only");
  }
  if (o.rounds < 1 || o.warmup < 0)
    throw std::invalid_argument("--rounds must be >= 1 and --warmup >= 0");
  if (o.tokens < 0) throw std::invalid_argument("--tokens must be >= 1");
  for (const auto& d : o.dtypes)
    if (d != "fp32" && d != "bf16")
      throw std::invalid_argument("unknown dtype '" + d + "' (fp32, bf16)");
  for (const auto& p : o.passes)
    if (p != "fwd" && p != "fwdbwd")
      throw std::invalid_argument("unknown pass '" + p + "' (fwd, fwdbwd)");
  for (const auto& m : o.impls)
    if (o.device.empty() && m != "lib" && m != "lib_recompute" && m != "naive" &&
        m != "dense_dispatch" && m != "dense_equiv")
      throw std::invalid_argument("unknown impl '" + m + "'");
  for (const auto& s : o.shapes) shape_by_id(s);
  check_layer_shapes(o.layers);
  for (const auto& d : o.dists)
    if (std::find(distributions().begin(), distributions().end(), d) == distributions().end())
      throw std::invalid_argument("unknown distribution '" + d + "'");
  return o;
}

}  // namespace moe::bench
