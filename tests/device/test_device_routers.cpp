// The top-k routers and the expert engine on the device under test (device_under_test.h), forward
// and backward, against a float64 reference on the CPU that evaluates every expert and mixes them
// by a routing table computed by hand (support/reference.h), differentiated by autograd:
// softmax top-k, Shazeer's noisy top-k, Switch; every activation; with and without capacity;
// biases; the hidden layer kept or recomputed; one token and many; float32 (TF32 off on CUDA) to
// 1e-5, bfloat16 (float32 router) to the bf16 bounds of tests/layers/test_bf16.cpp.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "device/device_under_test.h"
#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::RouterKind;
using moe::nn::SparseMoE;
using moe::nn::SparseMoEOptions;
namespace mt = moe::testing;

struct Case {
  RouterKind kind;
  int64_t k;
  double capacity_factor;
  Activation act;
  bool bias;
  bool train;
  bool recompute;
  int64_t tokens;
  c10::ScalarType dtype;
  // Widths: multiples of 8 (d = 16, h = 24) are what the grouped GEMMs take (docs/gpu.md); the
  // others (12, 10) take the per-expert GEMMs.
  int64_t d = 12, h = 10;
};

std::string name_of(const Case& c) {
  std::ostringstream s;
  s << moe::to_string(c.kind) << "_k" << c.k << "_cf" << static_cast<int>(c.capacity_factor * 100)
    << "_" << moe::to_string(c.act) << (c.bias ? "_bias" : "") << (c.train ? "_train" : "_eval")
    << (c.recompute ? "_recompute" : "") << "_T" << c.tokens << "_d" << c.d << "_"
    << (c.dtype == at::kBFloat16 ? "bf16" : "f32");
  return s.str();
}

torch::Tensor leaf64(const torch::Tensor& t) {
  return t.defined() ? t.detach().to(at::kCPU).to(at::kDouble).requires_grad_() : torch::Tensor();
}

class DeviceRouters : public ::testing::TestWithParam<Case> {};

TEST_P(DeviceRouters, ForwardAndBackwardMatchTheFloat64Reference) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = mt::device_under_test();
  const Case c = GetParam();
  const int64_t d = c.d, h = c.h, E = 8, T = c.tokens;
  const bool noisy = c.kind == RouterKind::kNoisyTopK;
  torch::manual_seed(42);
  SparseMoE layer(SparseMoEOptions(d, E)
                      .hidden_size(h)
                      .top_k(c.k)
                      .router(c.kind)
                      .activation(c.act)
                      .capacity_factor(c.capacity_factor)
                      .router_bias(c.bias)
                      .expert_bias(c.bias)
                      .recompute_hidden(c.recompute)
                      .router_zero_init(false)
                      .router_init_std(1.0));
  {
    torch::NoGradGuard g;
    if (noisy) layer->router->noise_weight.normal_(0.0, 0.5);
    if (c.bias) {
      layer->router->bias.normal_();
      layer->experts->b1.normal_();
      layer->experts->b2.normal_();
    }
  }
  layer->to(c.dtype);  // bf16: the router keeps float32 weights
  layer->to(device);
  layer->train(c.train);
  const auto x_cpu = torch::randn({T, d}).to(c.dtype);
  const auto upstream = torch::randn({T, d}).to(c.dtype);
  auto x =
      x_cpu.to(at::TensorOptions(device), /*non_blocking=*/false, /*copy=*/true).requires_grad_();
  torch::manual_seed(7);
  const auto out = layer->forward(x);
  ASSERT_EQ(out.output.device(), device);
  out.output.backward(upstream.to(device));

  // The reference, in float64 on the CPU from the same (dtype-rounded) values.
  const auto& router = layer->router;
  const auto& ex = layer->experts;
  auto x64 = leaf64(x_cpu), wr = leaf64(router->weight), br = leaf64(router->bias);
  auto wn = noisy ? leaf64(router->noise_weight) : torch::Tensor();
  auto w1 = leaf64(ex->w1), w2 = leaf64(ex->w2), w3 = leaf64(ex->w3), b1 = leaf64(ex->b1),
       b2 = leaf64(ex->b2);
  auto logits = x64.matmul(wr.t());
  if (c.bias) logits = logits + br;
  auto routed_on = logits;
  if (noisy && c.train) {
    // The router draws one standard normal [T, E] in its own precision, on its device.
    torch::manual_seed(7);
    const auto noise = torch::randn({T, E}, router->weight.options()).to(at::kCPU).to(at::kDouble);
    routed_on = logits + noise * (at::softplus(x64.matmul(wn.t())) + 1e-2);
  }
  if (c.dtype != at::kDouble) {
    ASSERT_GT(mt::topk_margin(routed_on.detach(), c.k), 1e-4)
        << "the draw has a near-tie: pick another seed";
  }
  const auto chosen = mt::reference_topk_indices(routed_on, c.k);
  torch::Tensor gate;
  if (noisy) {
    gate = at::softmax(routed_on.gather(1, chosen), -1);
  } else {
    gate = at::softmax(logits, -1).gather(1, chosen);
    if (c.kind == RouterKind::kSoftmaxTopK) gate = gate / gate.sum(-1, true);
  }
  auto index = chosen;
  if (c.capacity_factor > 0) {
    const auto cap = static_cast<int64_t>(std::ceil(double(T) * c.k / E * c.capacity_factor));
    index = mt::reference_capacity({chosen, gate.detach()}, E, cap).expert_index;
    gate = gate * (index >= 0).to(at::kDouble);
  }
  ASSERT_TRUE(torch::equal(out.routing.expert_index.to(at::kCPU), index))
      << "device routing\n"
      << out.routing.expert_index << "\nreference\n"
      << index;
  mt::expect_matches(out.routing.gate, gate, at::kFloat, "gate");
  const auto ref = mt::dense_moe_reference(x64, index, gate, w1, w2, w3, b1, b2, c.act);
  mt::expect_matches(out.output, ref, c.dtype, "output");

  ref.backward(upstream.to(at::kDouble));
  mt::expect_matches(x.grad(), x64.grad(), c.dtype, "dL/dx");
  // The router's gradients are sums over tokens of differences of bf16 expert outputs
  // (∝ o_i - o_j): NMSE 1e-3 under bf16 (1.7e-4 measured on the CPU's own path).
  constexpr double kRouterNmse = 1e-3;
  mt::expect_matches(router->weight.grad(), wr.grad(), c.dtype, "dL/d router weight", kRouterNmse);
  if (c.bias)
    mt::expect_matches(router->bias.grad(), br.grad(), c.dtype, "dL/d router bias", kRouterNmse);
  if (noisy && c.train)
    mt::expect_matches(router->noise_weight.grad(), wn.grad(), c.dtype, "dL/d noise weight",
                       kRouterNmse);
  mt::expect_matches(ex->w1.grad(), w1.grad(), c.dtype, "dL/dw1");
  mt::expect_matches(ex->w2.grad(), w2.grad(), c.dtype, "dL/dw2");
  if (w3.defined()) mt::expect_matches(ex->w3.grad(), w3.grad(), c.dtype, "dL/dw3");
  if (c.bias) {
    mt::expect_matches(ex->b1.grad(), b1.grad(), c.dtype, "dL/db1");
    mt::expect_matches(ex->b2.grad(), b2.grad(), c.dtype, "dL/db2");
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const Activation acts[] = {Activation::kReLU, Activation::kGELU, Activation::kSiLU,
                             Activation::kSwiGLU, Activation::kGEGLU};
  int i = 0;
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (auto kind : {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch})
      for (int64_t k : {1, 2})
        for (double cf : {0.0, 1.0}) {
          if (kind == RouterKind::kSwitch && k != 1) continue;
          const bool train = kind != RouterKind::kNoisyTopK || (i % 2 == 0);
          Case c{kind, k, cf, acts[i % 5], i % 3 == 0, train, i % 4 == 1, 18, dtype};
          if (dtype == at::kBFloat16) {
            c.d = 16;
            c.h = 24;
          }
          cases.push_back(c);
          ++i;
        }
  // One token (a GEMM of one row per expert), and many tokens per expert.
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    cases.push_back(
        {RouterKind::kSoftmaxTopK, 2, 0.0, Activation::kSwiGLU, true, true, false, 1, dtype});
    cases.push_back({RouterKind::kNoisyTopK, 2, 1.25, Activation::kGELU, false, true, true, 300,
                     dtype, 16, 24});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Table, DeviceRouters, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return name_of(info.param); });

// A non-finite token under NonFinitePolicy::kSkip is routed nowhere: its output row and input
// gradient are zero, and every other token is as if it were absent.
TEST(DeviceRouters, SkippedTokenGetsZeroAndTheOthersAreUnchanged) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = mt::device_under_test();
  const int64_t d = 12, E = 6, T = 10;
  torch::manual_seed(5);
  SparseMoE layer(SparseMoEOptions(d, E)
                      .hidden_size(8)
                      .top_k(2)
                      .non_finite(moe::NonFinitePolicy::kSkip)
                      .router_zero_init(false)
                      .router_init_std(1.0));
  layer->to(device);
  auto x_cpu = torch::randn({T, d});
  x_cpu[4][0] = std::nan("");
  auto x =
      x_cpu.to(at::TensorOptions(device), /*non_blocking=*/false, /*copy=*/true).requires_grad_();
  const auto out = layer->forward(x);
  out.output.sum().backward();
  EXPECT_EQ(out.stats.skipped.to(at::kCPU).item<int64_t>(), 1);

  auto x64 = leaf64(x_cpu.index_fill(0, at::tensor({int64_t{4}}), 0.0));
  const auto wr = leaf64(layer->router->weight);
  auto route = mt::reference_softmax_route(x64.matmul(wr.t()).detach(), 2, true);
  route.expert_index[4].fill_(-1);
  const auto& ex = layer->experts;
  const auto gate = at::softmax(x64.matmul(wr.t()), -1).gather(1, route.expert_index.clamp_min(0)) *
                    (route.expert_index >= 0).to(at::kDouble);
  const auto ref = mt::dense_moe_reference(
      x64, route.expert_index, gate / gate.sum(-1, true).clamp_min(1e-300), leaf64(ex->w1),
      leaf64(ex->w2), {}, leaf64(ex->b1), leaf64(ex->b2), Activation::kReLU);
  ASSERT_TRUE(torch::equal(out.routing.expert_index.to(at::kCPU), route.expert_index));
  mt::expect_matches(out.output, ref, at::kFloat, "output");
  ref.sum().backward();
  const auto dx = x.grad().to(at::kCPU);
  EXPECT_TRUE(at::isfinite(dx).all().item<bool>());
  EXPECT_EQ(dx[4].abs().max().item<double>(), 0.0);
  auto dx_ref = x64.grad().clone();
  dx_ref[4].zero_();
  mt::expect_matches(dx, dx_ref, at::kFloat, "dL/dx");
}

// The same layer, input and seed give the same bits on a second run, in float32 and bf16: output,
// auxiliary loss and every gradient (the engine sums each token's rows in slot order, and the
// routers' per-expert sums are plain reductions; src/plan/sum_by_token.h, docs/gpu.md).
TEST(DeviceRouters, RepeatBitwise) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = mt::device_under_test();
  const int64_t d = 16, E = 8, T = 64;
  for (const auto dtype : {at::kFloat, at::kBFloat16})
    for (const auto kind :
         {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch}) {
      SCOPED_TRACE(std::string(moe::to_string(kind)) + " " + c10::toString(dtype));
      torch::manual_seed(9);
      auto options = SparseMoEOptions(d, E)
                         .hidden_size(24)
                         .router(kind)
                         .top_k(kind == RouterKind::kSwitch ? 1 : 2)
                         .activation(Activation::kSwiGLU)
                         .router_zero_init(false)
                         .router_init_std(1.0);
      if (kind == RouterKind::kSwitch) options.capacity_factor(1.25).balance_coef(0.01);
      if (kind == RouterKind::kSoftmaxTopK) options.balance_coef(0.01).z_loss_coef(1e-3);
      if (kind == RouterKind::kNoisyTopK) options.importance_coef(0.1).load_coef(0.1);
      SparseMoE layer(options);
      layer->to(dtype);
      layer->to(device);
      const auto x_cpu = torch::randn({T, d}).to(dtype);
      const auto upstream = torch::randn({T, d}).to(dtype).to(device);
      auto run = [&] {
        layer->zero_grad();
        auto x = x_cpu.to(at::TensorOptions(device), /*non_blocking=*/false, /*copy=*/true)
                     .requires_grad_();
        torch::manual_seed(7);
        const auto out = layer->forward(x);
        ((out.output * upstream).sum() + out.aux_loss).backward();
        std::vector<torch::Tensor> r{out.output.detach(), out.aux_loss.detach(), x.grad()};
        for (const auto& p : layer->parameters())
          if (p.grad().defined()) r.push_back(p.grad().clone());
        return r;
      };
      const auto first = run(), second = run();
      ASSERT_EQ(first.size(), second.size());
      for (size_t i = 0; i < first.size(); ++i)
        EXPECT_TRUE(mt::bitwise_equal(first[i].to(at::kCPU), second[i].to(at::kCPU)))
            << "tensor " << i << " (output, aux loss, dL/dx, then the parameters' gradients)";
    }
}

}  // namespace
