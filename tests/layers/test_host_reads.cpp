// The layers' portable path reads nothing back from the device in a forward or backward without
// statistics (docs/gpu.md): counted with HostReadCounter (support/host_reads.h) on the CPU under
// MOE_ENGINE_BACKEND=portable, where the same code runs as on a GPU. Every routed layer whose
// routing runs on the device: softmax top-k with and without capacity, Switch with jitter,
// Shazeer's noisy top-k, expert choice, HyperRouter with SMoE-Dropout's k schedule and DynMoE's
// top-any (recording its routing), in training (forward and backward) and in evaluation. Not
// visible to the counter: the engine's copy of the experts' segment bounds to the host
// (docs/gpu.md: the one read, until a grouped GEMM makes it unnecessary).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "moe/moe.h"
#include "support/host_reads.h"

namespace {

using namespace moe;
using namespace moe::nn;

constexpr int64_t kD = 8, kE = 4, kH = 12, kT = 24;

struct Layer {
  std::string name;
  std::function<MoEOutput(const torch::Tensor&)> forward;
  torch::nn::Module* module;
  std::function<void()> before = [] {};
};

SparseMoEOptions sparse(RouterKind kind) {
  return SparseMoEOptions(kD, kE).router(kind).non_finite(NonFinitePolicy::kSkip);
}

TEST(HostReads, NoneOnThePortablePath) {
  if (!engine::portable_path(at::kCPU))
    GTEST_SKIP() << "runs on the portable path (the portable.* copy, MOE_ENGINE_BACKEND=portable)";
  torch::manual_seed(3);
  SparseMoE top2(sparse(RouterKind::kSoftmaxTopK).balance_coef(0.01).z_loss_coef(1e-3));
  SparseMoE capped(sparse(RouterKind::kSoftmaxTopK).capacity_factor(1.0));
  SparseMoE switch_(
      sparse(RouterKind::kSwitch).top_k(1).jitter(0.01).capacity_factor(1.25).balance_coef(0.01));
  SparseMoE noisy(sparse(RouterKind::kNoisyTopK).importance_coef(0.1).load_coef(0.1));
  const auto ec = ExpertChoiceRouterOptions(kD, kE).non_finite(NonFinitePolicy::kSkip);
  RoutedMoE choice(RoutedMoEOptions(
      kD, [ec] { return ExpertChoiceRouter(ec).ptr(); }, ExpertBankOptions(kE, kD, kH)));
  HyperRouterMoE hyper(HyperRouterMoEOptions(kD, kE)
                           .hyper_hidden(16)
                           .k_schedule(TopKSchedule(TopKSchedule::Mode::kLinearIncrease, 1, kE, 10))
                           .non_finite(NonFinitePolicy::kSkip));
  TopAnyMoE top_any(TopAnyMoEOptions(kD, kE).initial_experts(2).non_finite(NonFinitePolicy::kSkip));
  std::vector<Layer> layers{
      {"softmax top-2, balance and z losses", [&](auto& x) { return top2(x); }, top2.ptr().get()},
      {"softmax top-2 with capacity", [&](auto& x) { return capped(x); }, capped.ptr().get()},
      {"switch, jitter, capacity", [&](auto& x) { return switch_(x); }, switch_.ptr().get()},
      {"noisy top-2", [&](auto& x) { return noisy(x); }, noisy.ptr().get()},
      {"expert choice", [&](auto& x) { return choice(x); }, choice.ptr().get()},
      {"HyperRouter, k schedule", [&](auto& x) { return hyper(x); }, hyper.ptr().get()},
      {"top-any, recording", [&](auto& x) { return top_any(x); }, top_any.ptr().get(),
       [&] { top_any->begin_recording(); }},
  };
  for (auto& layer : layers) {
    layer.before();
    for (bool training : {true, false}) {
      SCOPED_TRACE(layer.name + (training ? ", training" : ", evaluation"));
      layer.module->train(training);
      auto x = torch::randn({kT, kD});
      x[3][1] = std::nan("");  // a skipped token
      x.requires_grad_(training);
      moe::testing::HostReadCounter reads;
      const auto out = layer.forward(x);
      if (training) (out.output.pow(2).sum() + out.aux_loss).backward();
      EXPECT_EQ(reads.count(), 0) << reads.names();
      EXPECT_EQ(out.stats.skipped.item<int64_t>(), 1);
      EXPECT_TRUE(at::isfinite(out.output).all().item<bool>());
      if (training) {
        EXPECT_TRUE(at::isfinite(x.grad()).all().item<bool>());
      }
    }
  }
}

// The hierarchical router's plan of groups and the multi-task models' plans are built on the
// device as well; the hierarchical router copies its group bounds to the host for its per-group
// GEMMs (a copy, which the counter does not see: docs/gpu.md lists it).
TEST(HostReads, NoneInTheHierarchicalAndMultiTaskModels) {
  if (!engine::portable_path(at::kCPU))
    GTEST_SKIP() << "runs on the portable path (the portable.* copy, MOE_ENGINE_BACKEND=portable)";
  torch::manual_seed(4);
  HierarchicalMoE hier(
      HierarchicalMoEOptions(kD, 2, 3).hidden_size(kH).non_finite(NonFinitePolicy::kSkip));
  MMoE dense_gates(MMoEOptions(kD, kE, 2));
  MMoE sparse_gates(MMoEOptions(kD, kE, 2).gate(TaskGateOptions().top_k(2)));
  PLE ple(PLEOptions(kD, 2).levels(2).specific_experts(1).shared_experts(2));
  const auto task_loss = [](const MultiTaskOutput& o) {
    auto loss = o.aux_loss;
    for (const auto& y : o.outputs) loss = loss + y.pow(2).sum();
    return loss;
  };
  const std::vector<std::pair<std::string, std::function<torch::Tensor(const torch::Tensor&)>>>
      models{
          {"hierarchical 2x3",
           [&](const torch::Tensor& x) {
             const auto o = hier(x);
             return o.output.pow(2).sum() + o.aux_loss;
           }},
          {"MMoE, dense gates", [&](const torch::Tensor& x) { return task_loss(dense_gates(x)); }},
          {"MMoE, top-2 gates", [&](const torch::Tensor& x) { return task_loss(sparse_gates(x)); }},
          {"PLE, 2 levels", [&](const torch::Tensor& x) { return task_loss(ple(x)); }},
      };
  for (const auto& [name, loss_of] : models) {
    SCOPED_TRACE(name);
    const auto x = torch::randn({kT, kD}).requires_grad_();
    moe::testing::HostReadCounter reads;
    loss_of(x).backward();
    EXPECT_EQ(reads.count(), 0) << reads.names();
    EXPECT_TRUE(at::isfinite(x.grad()).all().item<bool>());
  }
}

// The counter does see a read: NonFinitePolicy::kError must read the count of non-finite tokens
// to decide whether to raise (that policy's one read per layer call, docs/gpu.md).
TEST(HostReads, TheErrorPolicyReadsOnce) {
  if (!engine::portable_path(at::kCPU))
    GTEST_SKIP() << "runs on the portable path (the portable.* copy, MOE_ENGINE_BACKEND=portable)";
  SparseMoE layer(SparseMoEOptions(kD, kE));
  moe::testing::HostReadCounter reads;
  layer(torch::randn({kT, kD}));
  EXPECT_EQ(reads.count(), 1) << reads.names();
}

}  // namespace
