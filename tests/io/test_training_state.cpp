// Training checkpoints (include/moe/io/training_state.h): stop after some steps, load into freshly
// built objects, continue: the losses equal those of the uninterrupted run bit for bit (the noisy
// router and the batch sampling draw from the restored RNG). Also for a TopAnyMoE whose expert
// count changed, and the errors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <unistd.h>

#include <filesystem>

#include "moe/io/checkpoint.h"
#include "moe/io/training_state.h"
#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    in = register_module("in", torch::nn::Linear(6, 8));
    moe = register_module("moe",
                          moe::nn::SparseMoE(moe::nn::SparseMoEOptions(8, 4).hidden_size(5).router(
                              moe::RouterKind::kNoisyTopK)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto o = moe->forward(torch::relu(in(x)));
    return o.output.pow(2).mean() + o.aux_loss;
  }
  torch::nn::Linear in{nullptr};
  moe::nn::SparseMoE moe{nullptr};
};
TORCH_MODULE(Net);

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / (name + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

// One step on a batch drawn from the global RNG.
double step(Net& net, torch::optim::Optimizer& opt, const torch::Tensor& data) {
  const auto idx = torch::randint(data.size(0), {16}, at::kLong);
  opt.zero_grad();
  auto loss = net->forward(data.index_select(0, idx));
  loss.backward();
  opt.step();
  return loss.item<double>();
}

TEST(TrainingCheckpoint, ResumeIsBitExact) {
  const auto data = torch::randn({200, 6});
  const auto path = temp_path("moe_resume_");
  std::vector<double> full, resumed;
  {
    torch::manual_seed(1);
    Net net;
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
    for (int s = 0; s < 10; ++s) {
      if (s == 5) moe::io::save_checkpoint(*net, opt, path, {{"step", "5"}});
      full.push_back(step(net, opt, data));
    }
  }
  torch::manual_seed(99);  // other weights and another RNG state: the file must restore both
  Net net;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.5));
  const auto meta = moe::io::load_checkpoint(*net, opt, path);
  EXPECT_EQ(meta.at("step"), "5");
  EXPECT_EQ(meta.count("moe.optimizer"), 0u);
  EXPECT_EQ(opt.param_groups()[0].options().get_lr(), 1e-2);
  for (int s = 5; s < 10; ++s) resumed.push_back(step(net, opt, data));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(resumed[i], full[5 + i]) << "step " << 5 + i;
  fs::remove(path);
}

TEST(TrainingCheckpoint, TopAnyMoEAfterAResizeResumesBitExactly) {
  using moe::nn::ExpertStorage;
  using moe::nn::TopAnyMoE;
  using moe::nn::TopAnyMoEOptions;
  const auto path = temp_path("moe_resume_topany_");
  const auto x = torch::randn({32, 6});
  auto train = [&](TopAnyMoE& l, torch::optim::Optimizer& o) {
    o.zero_grad();
    auto out = l->forward(x);
    auto loss = out.output.pow(2).mean() + out.aux_loss;
    loss.backward();
    o.step();
    return loss.item<double>();
  };
  auto options =
      TopAnyMoEOptions(6, 8).initial_experts(4).hidden_size(5).storage(ExpertStorage::kResize);
  torch::manual_seed(2);
  TopAnyMoE a(options);
  torch::optim::Adam oa(a->parameters(), torch::optim::AdamOptions(1e-2));
  train(a, oa);
  moe::nn::RoutingRecords rec;
  rec.expert_counts = torch::tensor({3, 0, 1, 2}, at::kLong);
  rec.unrouted_sum = torch::ones({6});
  a->update_experts(rec, &oa);  // 4 -> 3 + 1 experts, moments carried
  train(a, oa);
  moe::io::save_checkpoint(*a, oa, path);
  std::vector<double> full;
  for (int i = 0; i < 3; ++i) full.push_back(train(a, oa));

  torch::manual_seed(3);
  TopAnyMoE b(options.initial_experts(2));
  torch::optim::Adam ob(b->parameters(), torch::optim::AdamOptions(1e-2));
  moe::io::load_checkpoint(*b, ob, path);
  EXPECT_EQ(b->num_slots(), 4);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(train(b, ob), full[i]) << i;
  fs::remove(path);
}

TEST(TrainingCheckpoint, MismatchesAreErrorsThatChangeNothing) {
  const auto path = temp_path("moe_ckpt_err_");
  torch::manual_seed(4);
  Net net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-3));
  moe::io::save_checkpoint(*net, adam, path);
  torch::manual_seed(5);
  Net other;
  const auto w = other->in->weight.clone();
  torch::optim::SGD sgd(other->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*other, sgd, path); },
                              {"holds adam state", "sgd"}));
  EXPECT_TRUE(torch::equal(other->in->weight, w));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_checkpoint(*net, adam, path, {{"moe.step", "1"}});
      },
      {"reserved"}));
  moe::io::save_module(*net, path);  // a plain module file has no training state
  torch::optim::Adam adam2(other->parameters(), torch::optim::AdamOptions(1e-3));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*other, adam2, path); },
                              {"no optimizer state"}));
  fs::remove(path);
}

}  // namespace
