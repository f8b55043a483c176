// Checkpoints written before the routed-layer refactor (tests/fixtures/layers_v1, written by
// tests/fixtures/make_layer_checkpoints.cpp against commit 051c8bc) load into today's layers, and
// the loaded layers compute the eval outputs the old code saved: parameter names, shapes and the
// forward are unchanged.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "moe/moe.h"
#include "support/test_util.h"

namespace {

using namespace moe;
using namespace moe::nn;
namespace mt = moe::testing;

const std::string kDir = std::string(MOE_TEST_FIXTURES) + "/layers_v1/";

// Loads the fixture `name` into `layer`, runs the saved input in eval mode and compares with the
// saved output and routing: the same code path on the same kind of CPU gives the same values up
// to BLAS rounding (the old and new code run the same kernels).
template <typename Layer>
void expect_loads_and_matches(const std::string& name, Layer layer) {
  io::load_module(*layer, kDir + name + ".safetensors");
  const auto io = io::load_safetensors(kDir + name + ".io.safetensors");
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto out = layer->forward(io.find("x"));
  EXPECT_TRUE(mt::all_close(out.output, io.find("y"), 1e-5, 1e-6)) << name;
  EXPECT_TRUE(torch::equal(out.routing.expert_index, io.find("expert_index"))) << name;
  EXPECT_TRUE(mt::all_close(out.routing.gate, io.find("gate"), 1e-6, 1e-7)) << name;
}

TEST(CheckpointCompat, SparseMoEOfEveryRouterKind) {
  expect_loads_and_matches(
      "sparse_noisy_topk",
      SparseMoE(SparseMoEOptions(8, 4).hidden_size(16).router(RouterKind::kNoisyTopK)));
  expect_loads_and_matches(
      "sparse_softmax_topk_bias",
      SparseMoE(
          SparseMoEOptions(8, 4).hidden_size(16).router_bias(true).expert_bias(true).activation(
              Activation::kSwiGLU)));
  expect_loads_and_matches(
      "sparse_switch",
      SparseMoE(SparseMoEOptions(8, 4).hidden_size(16).top_k(1).router(RouterKind::kSwitch)));
  expect_loads_and_matches(
      "sparse_smoe_dropout",
      SparseMoE(SparseMoEOptions(8, 4).hidden_size(16).router(RouterKind::kFrozenRandom)));
  expect_loads_and_matches(
      "sparse_hyper",
      SparseMoE(SparseMoEOptions(8, 4).hidden_size(16).router(RouterKind::kHyper).hyper_hidden(6)));
}

TEST(CheckpointCompat, HyperRouterMoE) {
  expect_loads_and_matches(
      "hyper_router_moe",
      HyperRouterMoE(HyperRouterMoEOptions(8, 4).hidden_size(16).hyper_hidden(6)));
  expect_loads_and_matches("hyper_router_moe_smoe_dropout",
                           HyperRouterMoE(HyperRouterMoEOptions(8, 4).hidden_size(16).router(
                               HyperRouterKind::kFrozenRandom)));
}

TEST(CheckpointCompat, HierarchicalMoE) {
  expect_loads_and_matches("hierarchical",
                           HierarchicalMoE(HierarchicalMoEOptions(8, 2, 3).hidden_size(16)));
}

TEST(CheckpointCompat, TopAnyMoEPoolTrainableTemperatureAndResize) {
  expect_loads_and_matches("top_any_pool",
                           TopAnyMoE(TopAnyMoEOptions(8, 6).initial_experts(4).hidden_size(16)));
  expect_loads_and_matches(
      "top_any_trainable_temperature",
      TopAnyMoE(TopAnyMoEOptions(8, 6).initial_experts(4).hidden_size(16).temperature(
          TopAnyTemperature::kTrainable)));
  expect_loads_and_matches(
      "top_any_resize", TopAnyMoE(TopAnyMoEOptions(8, 6).initial_experts(3).hidden_size(16).storage(
                            ExpertStorage::kResize)));
}

// The fixture files hold exactly the tensors the layers have today: every name matches.
TEST(CheckpointCompat, ParameterNamesAreUnchanged) {
  auto layer = SparseMoE(SparseMoEOptions(8, 4).hidden_size(16).router(RouterKind::kNoisyTopK));
  const auto file = io::load_safetensors(kDir + "sparse_noisy_topk.safetensors");
  std::vector<std::string> in_file, in_layer;
  for (const auto& [name, t] : file.tensors) in_file.push_back(name);
  for (const auto& p : layer->named_parameters()) in_layer.push_back(p.key());
  for (const auto& b : layer->named_buffers()) in_layer.push_back(b.key());
  std::sort(in_file.begin(), in_file.end());
  std::sort(in_layer.begin(), in_layer.end());
  EXPECT_EQ(in_file, in_layer);
  EXPECT_EQ(in_layer, (std::vector<std::string>{"experts.w1", "experts.w2", "router.noise_weight",
                                                "router.weight"}));
}

}  // namespace
