// The layer options nest the router's and the experts' options: each setting is stored once, the
// short names set the nested field, and the layers are built from the nested structs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/moe.h"

namespace {

using namespace moe;
using namespace moe::nn;

TEST(LayerOptions, ShortNamesSetTheNestedOptions) {
  auto o = SparseMoEOptions(8, 4)
               .top_k(3)
               .router(RouterKind::kNoisyTopK)
               .router_bias(true)
               .freeze_router(true)
               .hidden_size(12)
               .activation(Activation::kSwiGLU)
               .expert_bias(true);
  EXPECT_EQ(o.router_options().top_k(), 3);
  EXPECT_EQ(o.router_options().kind(), RouterKind::kNoisyTopK);
  EXPECT_TRUE(o.router_options().bias());
  EXPECT_TRUE(o.router_options().frozen());
  EXPECT_EQ(o.router_options().name(), "SparseMoE");
  EXPECT_EQ(o.expert_options().hidden_size(), 12);
  EXPECT_EQ(o.expert_options().activation(), Activation::kSwiGLU);
  EXPECT_TRUE(o.expert_options().bias());
  o.d_model(16).num_experts(6);
  EXPECT_EQ(o.router_options().d_model(), 16);
  EXPECT_EQ(o.expert_options().d_model(), 16);
  EXPECT_EQ(o.expert_options().num_experts(), 6);
  // Set through the nested struct, read through the short name.
  o.expert_options().init_std(0.5);
  EXPECT_EQ(o.expert_init_std(), 0.5);
}

TEST(LayerOptions, LayersAreBuiltFromTheNestedOptions) {
  auto o = SparseMoEOptions(8, 4);
  o.router_options().kind(RouterKind::kNoisyTopK).top_k(1);
  o.expert_options().hidden_size(6).activation(Activation::kGEGLU);
  SparseMoE layer(o);
  EXPECT_EQ(layer->top_k(), 1);
  EXPECT_EQ(layer->experts->w1.sizes(), (std::vector<int64_t>{4, 8, 6}));
  EXPECT_TRUE(layer->experts->w3.defined());
  EXPECT_TRUE(layer->router->noise_weight.defined());

  auto h = HierarchicalMoEOptions(8, 2, 3).top_k(1).hidden_size(5);
  EXPECT_EQ(h.router_options().primary_top_k(), 1);
  EXPECT_EQ(h.router_options().secondary_top_k(), 1);
  EXPECT_EQ(HierarchicalMoE(h)->experts->w1.sizes(), (std::vector<int64_t>{6, 8, 5}));

  auto t = TopAnyMoEOptions(8, 6).hidden_size(5).temperature(TopAnyTemperature::kTrainable);
  EXPECT_EQ(t.router_options().temperature(), TopAnyTemperature::kTrainable);
  EXPECT_EQ(TopAnyMoE(t)->experts->w1.sizes(), (std::vector<int64_t>{6, 8, 5}));

  auto y = HyperRouterMoEOptions(8, 4).hidden_size(7).expert_bias(true);
  EXPECT_EQ(HyperRouterMoE(y)->experts->b1.sizes(), (std::vector<int64_t>{4, 7}));
}

}  // namespace
