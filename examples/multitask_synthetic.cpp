// The synthetic multi-task comparison of MMoE / PLE (docs/multitask.md): Shared-Bottom, OMoE, MMoE,
// CGC and PLE on two regression tasks whose correlation is controlled, several seeds each.
//
//   build/examples/multitask_synthetic [--correlations 1,0.9,0.5,0.2,0] [--seeds 3] [--epochs 20]
//                                      [--jsonl FILE]
#include "experiments/multitask_synthetic.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "moe/runtime.h"

int main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);
  try {
    moe::runtime::configure_threads();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "multitask_synthetic: %s\n", e.what());
    return 2;
  }
  moe::experiments::MultitaskConfig c;
  std::vector<double> ps = {1.0, 0.9, 0.5, 0.2, 0.0};
  int64_t seeds = 3;
  std::string jsonl;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || i + 1 >= argc) {
      std::printf(
          "usage: multitask_synthetic [--correlations P,P,...] [--seeds N] [--epochs N] "
          "[--jsonl FILE]\n");
      return a == "--help" ? 0 : 2;
    }
    const std::string v = argv[++i];
    if (a == "--correlations") {
      ps.clear();
      std::stringstream s(v);
      for (std::string item; std::getline(s, item, ',');) ps.push_back(std::stod(item));
    } else if (a == "--seeds") {
      seeds = std::stoll(v);
    } else if (a == "--epochs") {
      c.epochs = std::stoll(v);
    } else if (a == "--jsonl") {
      jsonl = v;
    } else {
      std::fprintf(stderr, "multitask_synthetic: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  FILE* out = jsonl.empty() ? nullptr : std::fopen(jsonl.c_str(), "w");
  // results[model][p][task] = the per-seed test MSE
  std::map<std::string, std::map<double, std::array<std::vector<double>, 2>>> results;
  std::map<std::string, int64_t> params;
  std::map<double, std::vector<double>> pearsons;
  for (double p : ps) {
    for (int64_t s = 0; s < seeds; ++s) {
      for (const auto& m : moe::experiments::multitask_models()) {
        const auto r = moe::experiments::run_multitask(c, m, p, static_cast<uint64_t>(s));
        results[m][p][0].push_back(r.test_nmse[0]);
        results[m][p][1].push_back(r.test_nmse[1]);
        params[m] = r.parameters;
        if (m == moe::experiments::multitask_models().front())
          pearsons[p].push_back(r.label_pearson);
        std::printf(
            "p=%.2f seed=%lld %-13s params %6lld  test MSE task1 %.4f task2 %.4f  "
            "(normalised %.4f %.4f; label pearson %.3f)\n",
            p, static_cast<long long>(s), m.c_str(), static_cast<long long>(r.parameters),
            r.test_mse[0], r.test_mse[1], r.test_nmse[0], r.test_nmse[1], r.label_pearson);
        std::fflush(stdout);
        if (out)
          std::fprintf(out,
                       "{\"model\":\"%s\",\"p\":%g,\"seed\":%lld,\"params\":%lld,\"mse1\":%.6f,"
                       "\"mse2\":%.6f,\"nmse1\":%.6f,\"nmse2\":%.6f,\"pearson\":%.4f}\n",
                       m.c_str(), p, static_cast<long long>(s),
                       static_cast<long long>(r.parameters), r.test_mse[0], r.test_mse[1],
                       r.test_nmse[0], r.test_nmse[1], r.label_pearson);
      }
    }
  }
  if (out) std::fclose(out);
  auto stats = [](const std::vector<double>& v) {
    double m = 0, sq = 0;
    for (double x : v) m += x;
    m /= static_cast<double>(v.size());
    for (double x : v) sq += (x - m) * (x - m);
    return std::make_pair(m,
                          v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0.0);
  };
  std::printf(
      "\ntest MSE / label variance of task 1 / task 2, mean ± std over %lld seeds\n\n"
      "| model | params |",
      static_cast<long long>(seeds));
  for (double p : ps) std::printf(" p = %.1f |", p);
  std::printf("\n|---|---|");
  for (size_t i = 0; i < ps.size(); ++i) std::printf("---|");
  std::printf("\n| label Pearson (measured) | |");
  for (double p : ps) std::printf(" %.3f |", stats(pearsons[p]).first);
  std::printf("\n");
  for (const auto& m : moe::experiments::multitask_models()) {
    std::printf("| %s | %lld |", m.c_str(), static_cast<long long>(params[m]));
    for (double p : ps) {
      const auto [m1, s1] = stats(results[m][p][0]);
      const auto [m2, s2] = stats(results[m][p][1]);
      std::printf(" %.4f ± %.4f / %.4f ± %.4f |", m1, s1, m2, s2);
    }
    std::printf("\n");
  }
  return 0;
}
