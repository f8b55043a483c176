// bf16 experts with an fp32 router (RELIABILITY.md §6 A2, A4, A9): the router keeps float32 weights
// and routes exactly like a float64 router on the same inputs; outputs and gradients match a
// float64 reference computed from the same bf16-rounded inputs and weights: outputs within
// rtol 1.6e-2, atol 1e-2, gradients (three bf16 roundings deep) with NMSE <= 1e-4 (RELIABILITY.md
// §6 A2, A4).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
namespace mt = moe::testing;

class Bf16Experts : public ::testing::TestWithParam<Activation> {};

TEST_P(Bf16Experts, MatchFloat64ReferenceOnRoundedValues) {
  const Activation act = GetParam();
  const int64_t d = 32, E = 8, h = 48, T = 96;
  torch::manual_seed(12);
  moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(d, E)
                               .hidden_size(h)
                               .top_k(2)
                               .activation(act)
                               .router(moe::RouterKind::kNoisyTopK)
                               .router_zero_init(false)
                               .router_init_std(0.5));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w1.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->router->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(layer->router->noise_weight.scalar_type(), at::kFloat);
  layer->eval();

  auto x = torch::randn({T, d}).to(at::kBFloat16).requires_grad_();
  auto out = layer->forward(x);
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out.routing.gate.scalar_type(), at::kFloat);

  // Routing: identical to a float64 router on the same (bf16) inputs.
  const auto xd = x.detach().to(at::kDouble);
  const auto logits = xd.matmul(layer->router->weight.to(at::kDouble).t());
  EXPECT_TRUE(torch::equal(out.routing.expert_index, mt::reference_topk_indices(logits, 2)));

  // Values: float64 reference from the bf16-rounded inputs and weights; its gates are recomputed
  // from its own x (softmax over the kept logits, eval mode), so dx includes the router path as the
  // module's.
  const auto& ex = layer->experts;
  auto w1 = ex->w1.detach().to(at::kDouble).requires_grad_();
  auto w2 = ex->w2.detach().to(at::kDouble).requires_grad_();
  auto w3 = ex->w3.defined() ? ex->w3.detach().to(at::kDouble).requires_grad_() : torch::Tensor();
  auto xr = xd.clone().requires_grad_();
  const auto idx = out.routing.expert_index;
  const auto ref_gate =
      at::softmax(xr.matmul(layer->router->weight.to(at::kDouble).t()).gather(1, idx), -1);
  auto ref = mt::dense_moe_reference(xr, idx, ref_gate, w1, w2, w3, {}, {}, act);
  EXPECT_CLOSE(out.output, ref, 1.6e-2, 1e-2);

  auto g = torch::randn({T, d}).to(at::kBFloat16);
  out.output.backward(g);
  ref.backward(g.to(at::kDouble));
  EXPECT_LE(mt::nmse(x.grad(), xr.grad()), 1e-4);
  EXPECT_LE(mt::nmse(ex->w1.grad(), w1.grad()), 1e-4);
  EXPECT_LE(mt::nmse(ex->w2.grad(), w2.grad()), 1e-4);
  if (w3.defined()) {
    EXPECT_LE(mt::nmse(ex->w3.grad(), w3.grad()), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Activations, Bf16Experts,
                         ::testing::Values(Activation::kReLU, Activation::kGELU,
                                           Activation::kSwiGLU),
                         [](const auto& info) { return std::string(moe::to_string(info.param)); });

TEST(Bf16, HierarchicalKeepsFloat32Gates) {
  moe::nn::HierarchicalMoE layer(moe::nn::HierarchicalMoEOptions(8, 2, 3).hidden_size(4));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w2.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->primary_router->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(layer->secondary_router->noise_weight.scalar_type(), at::kFloat);
  auto out = layer->forward(torch::randn({5, 8}).to(at::kBFloat16));
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  layer->to(at::kDouble);
  EXPECT_EQ(layer->primary_router->weight.scalar_type(), at::kDouble);
}

}  // namespace
