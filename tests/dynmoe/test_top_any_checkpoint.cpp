// Checkpoints of a TopAnyMoE whose expert set changed during training
// (include/moe/io/checkpoint.h): saved after a removal and an addition, loaded in a fresh process,
// identical outputs; clear errors when a layer cannot take the checkpoint's expert count.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "moe/nn/top_any_moe.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;
using moe::nn::ExpertStorage;
using moe::nn::RoutingRecords;
using moe::nn::TopAnyMoE;
using moe::nn::TopAnyMoEOptions;

constexpr const char* kChildEnv = "MOE_TOPANY_CHECKPOINT_DIR";

TopAnyMoEOptions resize_options() {
  return TopAnyMoEOptions(6, 8).initial_experts(4).hidden_size(5).storage(ExpertStorage::kResize);
}

void train_step(TopAnyMoE& layer, torch::optim::Optimizer& opt, const torch::Tensor& x) {
  opt.zero_grad();
  auto o = layer->forward(x);
  (o.output.pow(2).mean() + o.aux_loss).backward();
  opt.step();
}

TEST(TopAnyCheckpoint, RoundTripsAfterRemovalAndAdditionInAFreshProcess) {
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "parent test";
  std::string tmpl = (fs::temp_directory_path() / "moe_ckpt_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());

  torch::manual_seed(5);
  TopAnyMoE layer(resize_options());
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({32, 6});
  train_step(layer, opt, x);
  RoutingRecords rec;
  rec.expert_counts = torch::tensor({4, 0, 0, 7}, at::kLong);
  rec.unrouted_sum = torch::randn({6});
  rec.unrouted_sum[0] = rec.unrouted_sum.abs().sum() + 1;  // Σ R_S != 0
  const auto u = layer->update_experts(rec, &opt);
  ASSERT_EQ(u.removed, (std::vector<int64_t>{1, 2}));
  ASSERT_EQ(u.added, 2);
  train_step(layer, opt, x);
  layer->eval();
  const auto y = layer->forward(x).output;
  moe::io::save_module(*layer, (dir / "model.safetensors").string(), {{"experts", "3"}});
  moe::io::save_safetensors((dir / "expect.safetensors").string(), {{"x", x}, {"y", y}});

  ::setenv(kChildEnv, dir.c_str(), 1);
  const std::string log = (dir / "child.log").string();
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const std::string cmd =
      "'" + self + "' --gtest_filter=TopAnyCheckpoint.ChildLoadsAndCompares > '" + log + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  ::unsetenv(kChildEnv);
  std::ifstream f(log);
  const std::string out((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("[  PASSED  ] 1 test"), std::string::npos) << out;
  fs::remove_all(dir);
}

// Runs only as the child process of the test above.
TEST(TopAnyCheckpoint, ChildLoadsAndCompares) {
  const char* dir = std::getenv(kChildEnv);
  if (dir == nullptr) GTEST_SKIP() << "runs as the child process of RoundTripsAfterRemoval...";
  torch::manual_seed(999);  // different initial weights: everything must come from the file
  TopAnyMoE layer(resize_options());
  ASSERT_EQ(layer->num_experts(), 4);
  const auto meta = moe::io::load_module(*layer, std::string(dir) + "/model.safetensors");
  EXPECT_EQ(meta.at("experts"), "3");
  EXPECT_EQ(layer->num_experts(), 3);
  const auto expect = moe::io::load_safetensors(std::string(dir) + "/expect.safetensors");
  layer->eval();
  const auto y = layer->forward(expect.find("x")).output;
  EXPECT_TRUE(mt::bitwise_equal(y, expect.find("y")));
}

TEST(TopAnyCheckpoint, PoolModeRoundTripRestoresTheMask) {
  std::string tmpl = (fs::temp_directory_path() / "moe_ckpt_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  const auto path = (dir / "pool.safetensors").string();
  torch::manual_seed(1);
  TopAnyMoE a(TopAnyMoEOptions(4, 6).initial_experts(3).hidden_size(3));
  RoutingRecords rec;
  rec.expert_counts = torch::tensor({0, 2, 1, 0, 0, 0}, at::kLong);
  rec.unrouted_sum = torch::tensor({1.f, 1.f, 0.f, 0.f});
  a->update_experts(rec);
  for (int i = 0; i < 3; ++i) a->forward(torch::randn({4, 4}));  // three training forwards
  moe::io::save_module(*a, path);
  torch::manual_seed(2);
  TopAnyMoE b(TopAnyMoEOptions(4, 6).initial_experts(3).hidden_size(3));
  moe::io::load_module(*b, path);
  EXPECT_TRUE(torch::equal(b->router->active, a->router->active));
  EXPECT_EQ(b->forward_count(), 3);  // the schedule's position travels with the checkpoint
  const auto x = torch::randn({10, 4});
  a->eval();
  b->eval();
  EXPECT_TRUE(mt::bitwise_equal(a->forward(x).output, b->forward(x).output));

  // A pool of another size cannot take it; nor can a resizable layer with a smaller bound.
  TopAnyMoE small(TopAnyMoEOptions(4, 5).initial_experts(3).hidden_size(3));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*small, path); },
                              {"TopAnyMoE", "5 experts", "checkpoint has 6", "cannot resize"}));
  TopAnyMoE bounded(
      TopAnyMoEOptions(4, 4).initial_experts(3).hidden_size(3).storage(ExpertStorage::kResize));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*bounded, path); },
                              {"max_experts=4", "checkpoint has 6"}));
  // A failed load changes nothing, not even the expert count of a resizable layer.
  {
    torch::manual_seed(3);
    TopAnyMoE src(
        TopAnyMoEOptions(4, 6).initial_experts(5).hidden_size(3).storage(ExpertStorage::kResize));
    moe::io::save_module(*src, path);
    auto f = moe::io::load_safetensors(path);
    std::vector<std::pair<std::string, torch::Tensor>> ts;
    for (auto& [n, t] : f.tensors)
      ts.emplace_back(n, n == "experts.w2" ? torch::zeros({5, 3, 5}) : t);
    moe::io::save_safetensors(path, ts);
    TopAnyMoE dst(
        TopAnyMoEOptions(4, 6).initial_experts(2).hidden_size(3).storage(ExpertStorage::kResize));
    const auto w1 = dst->experts->w1.clone();
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*dst, path); },
                                {"experts.w2", "[5, 3, 5]", "[5, 3, 4]"}));
    EXPECT_EQ(dst->num_experts(), 2);
    EXPECT_TRUE(torch::equal(dst->experts->w1, w1));
  }
  // A checkpoint of a different model names the missing tensor.
  moe::io::save_safetensors(path, {{"router.weight", torch::zeros({6, 4})}});
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*b, path); }, {"no tensor", "router."}));
  fs::remove_all(dir);
}

}  // namespace
