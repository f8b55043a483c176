#include "dynmoe/top_any_reference.h"

#include <ATen/ATen.h>

#include <cmath>

namespace moe::testing {

TopAnyReference top_any_reference(const torch::Tensor& x_in, const torch::Tensor& w_in,
                                  const torch::Tensor& g_in, const torch::Tensor& m_in,
                                  double lambda, bool eval, bool raw_score) {
  const auto x = x_in.to(at::kDouble).contiguous(), w = w_in.to(at::kDouble).contiguous();
  const auto g = g_in.to(at::kDouble).contiguous(), m = m_in.to(at::kDouble).contiguous();
  const int64_t T = x.size(0), d = x.size(1), E = w.size(0);
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  TopAnyReference r;
  r.scores = torch::zeros({T, E}, at::kDouble);
  r.fired = torch::zeros({T, E}, at::kBool);
  r.expert_index = torch::full({T, E}, -1, at::kLong);
  r.gate = torch::zeros({T, E}, at::kDouble);
  r.k = torch::zeros({T}, at::kLong);
  auto xa = x.accessor<double, 2>();
  auto wa = w.accessor<double, 2>();
  for (int64_t t = 0; t < T; ++t) {
    double xn = 0;
    for (int64_t j = 0; j < d; ++j) xn += xa[t][j] * xa[t][j];
    xn = std::max(std::sqrt(xn), 1e-12);
    int64_t k = 0, best = -1;
    double best_s = 0;
    for (int64_t e = 0; e < E; ++e) {
      double wn = 0, dot = 0;
      for (int64_t j = 0; j < d; ++j) {
        wn += wa[e][j] * wa[e][j];
        dot += xa[t][j] * wa[e][j];
      }
      wn = std::max(std::sqrt(wn), 1e-12);
      const double s = sig(dot / (xn * wn) * lambda) * m[e].item<double>();
      r.scores[t][e] = s;
      if (s > sig(g[e].item<double>() * lambda)) {
        r.fired[t][e] = true;
        ++k;
      }
      if (s > best_s) best_s = s, best = e;
    }
    for (int64_t e = 0; e < E; ++e) {
      if (r.fired[t][e].item<bool>()) {
        r.expert_index[t][e] = e;
        r.gate[t][e] = 1.0 / static_cast<double>(k);
      }
    }
    if (eval && k == 0 && best >= 0) {
      r.expert_index[t][best] = best;
      r.gate[t][best] = raw_score ? best_s : 1.0;
      k = 1;
    }
    r.k[t] = k;
  }
  return r;
}

}  // namespace moe::testing
