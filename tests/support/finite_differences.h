// Gradients against central finite differences in float64, for the layer tests that check a
// router's gradients by hand (test_expert_choice.cpp, test_gshard.cpp).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <vector>

namespace moe::testing {

/// d loss / d params[i] by autograd against (loss(θ + ε) − loss(θ − ε)) / 2ε for every
/// `stride`-th entry of each tensor (perturbed in place), to |Δ| <= tol·(1 + |fd|).
inline void expect_gradients_match_finite_differences(const std::function<torch::Tensor()>& loss,
                                                      const std::vector<torch::Tensor>& params,
                                                      int64_t stride, double eps = 1e-6,
                                                      double tol = 1e-6) {
  const auto grads = torch::autograd::grad({loss()}, params);
  for (size_t i = 0; i < params.size(); ++i) {
    auto flat = params[i].view(-1);
    const auto grad = grads[i].reshape(-1);
    for (int64_t j = 0; j < flat.numel(); j += stride) {
      double plus, minus;
      {
        torch::NoGradGuard no_grad;
        const double v = flat[j].item<double>();
        flat[j].fill_(v + eps);
        plus = loss().item<double>();
        flat[j].fill_(v - eps);
        minus = loss().item<double>();
        flat[j].fill_(v);
      }
      const double fd = (plus - minus) / (2 * eps);
      EXPECT_NEAR(grad[j].item<double>(), fd, tol * (1 + std::abs(fd)))
          << "parameter " << i << " entry " << j;
    }
  }
}

}  // namespace moe::testing
