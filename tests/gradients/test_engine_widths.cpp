// The engine (moe::functional::expert_mlp) with one-layer experts (no w2: o = act(x·w1 + b1), out =
// h) and with an output width other than the input width (w2 [E, h, out]): y and every gradient
// against a dense float64 reference (each pair computed on its own) and against central finite
// differences; on both engine schedules (few rows per expert: parallel; many: serial), with the
// hidden layer kept or recomputed; and dL/dx skipped when x needs no gradient
// (src/engine/backend.h, WantedGradients) without changing the other gradients.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <string>
#include <vector>

#include "moe/functional.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;

struct Case {
  Activation act;
  bool two_layers;  // w2 (out columns) or one-layer experts
  bool bias;
  bool recompute;
  int64_t T, E;  // T = 24, E = 6: parallel schedule; T = 700, E = 2: serial
};

constexpr int64_t kD = 5, kH = 7, kOut = 3, kK = 2;

struct Problem {
  torch::Tensor x, gate;
  moe::RoutingPlan plan;
  moe::functional::ExpertWeights w;
};

// Random tokens, two slots each (some unused), weights in float64, all requiring grad.
Problem make_problem(const Case& c) {
  torch::manual_seed(7);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  Problem p;
  auto index = torch::randint(-1, c.E, {c.T, kK}, torch::kLong);
  p.plan = moe::build_routing_plan(index, c.E);
  p.x = torch::randn({c.T, kD}, opts).requires_grad_();
  p.gate = torch::rand({c.T, kK}, opts).requires_grad_();
  auto param = [&](std::vector<int64_t> shape) {
    return (torch::randn(shape, opts) * 0.5).requires_grad_();
  };
  p.w.w1 = param({c.E, kD, kH});
  if (moe::is_gated(c.act)) p.w.w3 = param({c.E, kD, kH});
  if (c.bias) p.w.b1 = param({c.E, kH});
  if (c.two_layers) {
    p.w.w2 = param({c.E, kH, kOut});
    if (c.bias) p.w.b2 = param({c.E, kOut});
  }
  return p;
}

torch::Tensor engine(const Problem& p, const Case& c) {
  return moe::functional::expert_mlp(p.x, p.plan, moe::pair_weights(p.plan, p.gate), p.w, c.act,
                                     c.recompute);
}

// The same sum with plain ATen ops, one pair at a time.
torch::Tensor reference(const Problem& p, const Case& c) {
  const int64_t out = c.two_layers ? kOut : kH;
  auto y = torch::zeros({p.x.size(0), out}, p.x.options());
  const auto idx = p.plan.expert_offsets;
  for (int64_t e = 0; e < p.plan.num_experts; ++e) {
    for (int64_t q = idx[e].item<int64_t>(); q < idx[e + 1].item<int64_t>(); ++q) {
      const int64_t t = p.plan.token_index[q].item<int64_t>();
      const int64_t slot = p.plan.pair_slot[q].item<int64_t>();
      const auto xt = p.x[t].unsqueeze(0);
      auto h = xt.mm(p.w.w1[e]);
      if (c.bias) h = h + p.w.b1[e];
      auto a = moe::testing::reference_activation(c.act, h);
      if (moe::is_gated(c.act)) a = a * xt.mm(p.w.w3[e]);
      if (c.two_layers)
        a = a.mm(p.w.w2[e]) + (c.bias ? p.w.b2[e] : torch::zeros({out}, a.options()));
      y[t] = y[t] + p.gate.view({-1})[slot] * a[0];
    }
  }
  return y;
}

std::vector<std::pair<std::string, torch::Tensor>> inputs(const Problem& p) {
  std::vector<std::pair<std::string, torch::Tensor>> v{{"x", p.x}, {"gate", p.gate}};
  const std::pair<const char*, const torch::Tensor*> w[] = {
      {"w1", &p.w.w1}, {"w2", &p.w.w2}, {"w3", &p.w.w3}, {"b1", &p.w.b1}, {"b2", &p.w.b2}};
  for (const auto& [name, t] : w)
    if (t->defined()) v.emplace_back(name, *t);
  return v;
}

// d(Σ y·r) / d input, for a fixed random r.
std::vector<torch::Tensor> gradients(const Problem& p, const torch::Tensor& y,
                                     const torch::Tensor& r) {
  std::vector<torch::Tensor> in;
  for (const auto& [name, t] : inputs(p)) in.push_back(t);
  return torch::autograd::grad({(y * r).sum()}, in);
}

class EngineWidths : public ::testing::TestWithParam<Case> {};

TEST_P(EngineWidths, MatchDenseReference) {
  const Case c = GetParam();
  const Problem p = make_problem(c);
  const auto y = engine(p, c), y_ref = reference(p, c);
  ASSERT_EQ(y.sizes(), y_ref.sizes());
  EXPECT_TRUE(torch::allclose(y, y_ref, 1e-12, 1e-12)) << (y - y_ref).abs().max();
  const auto r = torch::randn_like(y_ref);
  const auto g = gradients(p, y, r), g_ref = gradients(p, y_ref, r);
  const auto names = inputs(p);
  for (size_t i = 0; i < g.size(); ++i)
    EXPECT_TRUE(torch::allclose(g[i], g_ref[i], 1e-11, 1e-11))
        << names[i].first << ": " << (g[i] - g_ref[i]).abs().max();
}

TEST_P(EngineWidths, MatchFiniteDifferences) {
  const Case c = GetParam();
  const Problem p = make_problem(c);
  const auto r = torch::randn({c.T, c.two_layers ? kOut : kH}, p.x.options());
  const auto g = gradients(p, engine(p, c), r);
  const auto named = inputs(p);
  const double eps = 1e-6;
  for (size_t i = 0; i < named.size(); ++i) {
    auto flat = named[i].second.detach().view({-1});  // shares storage with the input
    const auto grad = g[i].reshape({-1});
    for (int64_t j = 0; j < flat.numel(); j += std::max<int64_t>(1, flat.numel() / 6)) {
      torch::NoGradGuard no_grad;
      const double orig = flat[j].item<double>();
      flat[j] = orig + eps;
      const double lp = (engine(p, c) * r).sum().item<double>();
      flat[j] = orig - eps;
      const double lm = (engine(p, c) * r).sum().item<double>();
      flat[j] = orig;
      const double fd = (lp - lm) / (2 * eps);
      EXPECT_NEAR(grad[j].item<double>(), fd, 1e-6 + 1e-5 * std::abs(fd))
          << named[i].first << "[" << j << "]";
    }
  }
}

// x without requires_grad: no dL/dx, and the other gradients bitwise as with it.
TEST_P(EngineWidths, SkipInputGradientOnly) {
  const Case c = GetParam();
  const Problem p = make_problem(c);
  const auto r = torch::randn({c.T, c.two_layers ? kOut : kH}, p.x.options());
  const auto with_x = gradients(p, engine(p, c), r);
  Problem q = p;
  q.x = p.x.detach();
  const auto y = engine(q, c);
  std::vector<torch::Tensor> in;
  for (size_t i = 1; i < inputs(p).size(); ++i) in.push_back(inputs(p)[i].second);
  const auto without_x = torch::autograd::grad({(y * r).sum()}, in);
  for (size_t i = 0; i < in.size(); ++i)
    EXPECT_TRUE(moe::testing::bitwise_equal(without_x[i], with_x[i + 1])) << i;
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (auto act : {Activation::kReLU, Activation::kGELU, Activation::kSwiGLU})
    for (bool two : {false, true})
      for (bool recompute : {false, true}) {
        v.push_back({act, two, /*bias=*/true, recompute, 24, 6});
        v.push_back({act, two, /*bias=*/!two, recompute, 700, 2});
      }
  return v;
}

INSTANTIATE_TEST_SUITE_P(OneLayerAndOutWidth, EngineWidths, ::testing::ValuesIn(cases()),
                         [](const auto& info) {
                           const auto& c = info.param;
                           return std::string(moe::to_string(c.act)) +
                                  (c.two_layers ? "_out3" : "_one_layer") +
                                  (c.bias ? "_bias" : "") + (c.recompute ? "_recompute" : "") +
                                  (c.E > 2 ? "_parallel" : "_serial");
                         });

TEST(EngineWidths, RejectsB2WithoutW2) {
  const auto plan = moe::build_routing_plan(torch::zeros({3, 1}, torch::kLong), 1);
  const moe::functional::ExpertWeights w{torch::randn({1, 4, 5}), {}, {}, {}, torch::randn({1, 5})};
  EXPECT_THROW(moe::functional::expert_mlp(torch::randn({3, 4}), plan, torch::ones({3}), w,
                                           Activation::kReLU),
               c10::Error);
}

// float32 and bf16 one-layer experts agree with the float64 engine within their rounding.
TEST(EngineWidths, OneLayerFloat32AndBf16) {
  const Case c{Activation::kReLU, false, true, false, 24, 6};
  const Problem p = make_problem(c);
  const auto y64 = engine(p, c);
  for (auto dt : {torch::kFloat, torch::kBFloat16}) {
    torch::NoGradGuard no_grad;
    const moe::functional::ExpertWeights w{p.w.w1.to(dt), {}, {}, p.w.b1.to(dt), {}};
    const auto y = moe::functional::expert_mlp(p.x.to(dt), p.plan,
                                               moe::pair_weights(p.plan, p.gate).to(dt), w, c.act);
    const double tol = dt == torch::kFloat ? 1e-5 : 5e-2;
    EXPECT_TRUE(torch::allclose(y.to(torch::kDouble), y64, tol, tol)) << dt;
  }
}

}  // namespace
