// Routed layers with their experts spread over real processes (RoutedMoEImpl::distribute_experts)
// against the same layer in one process on the concatenated batch, for every router kind: outputs,
// auxiliary loss, routing statistics, input gradients and every parameter gradient after
// synchronize_gradients (float64 to 1e-10, float32 to 1e-5). Training mode, so the noisy gates,
// jitter, capacity drops and every auxiliary term are in play; one rank has no tokens.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "dist/rank_runner.h"
#include "moe/distributed.h"
#include "moe/nn/data_parallel.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/hyper_router_moe.h"
#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"
#include "moe/routers/expert_choice_router.h"
#include "support/test_util.h"

namespace {

namespace mt = moe::testing;
using moe::testing::dist::my_rank;

constexpr int64_t kD = 6;

template <typename Impl>
moe::nn::RoutedMoE routed(std::shared_ptr<Impl> layer) {
  return moe::nn::RoutedMoE(std::shared_ptr<moe::nn::RoutedMoEImpl>(std::move(layer)));
}

struct Case {
  std::string name;
  // The layer for E = 2·W experts (4·W for the hierarchy), built from the current seed.
  std::function<moe::nn::RoutedMoE(int W)> make;
  bool skew = false;  // every token to rank 0's experts
};

std::vector<Case> cases() {
  using moe::RouterKind;
  using moe::nn::SparseMoE;
  using moe::nn::SparseMoEOptions;
  auto sparse = [](RouterKind kind, int64_t k, std::function<void(SparseMoEOptions&)> more) {
    return [=](int W) {
      auto o = SparseMoEOptions(kD, 2 * W).router(kind).top_k(k).hidden_size(5);
      more(o);
      return routed(SparseMoE(o).ptr());
    };
  };
  std::vector<Case> c;
  c.push_back({"softmax_topk", sparse(RouterKind::kSoftmaxTopK, 2, [](SparseMoEOptions& o) {
                 o.balance_coef(0.1)
                     .z_loss_coef(0.01)
                     .importance_coef(0.1)
                     .load_coef(0.1)
                     .router_bias(true)
                     .activation(moe::Activation::kSwiGLU);
               })});
  c.push_back(
      {"softmax_topk_skewed",
       sparse(RouterKind::kSoftmaxTopK, 2, [](SparseMoEOptions& o) { o.router_bias(true); }),
       /*skew=*/true});
  c.push_back({"switch_capacity", sparse(RouterKind::kSwitch, 1, [](SparseMoEOptions& o) {
                 o.capacity_factor(0.6).jitter(0.05).z_loss_coef(0.01).expert_bias(true);
               })});
  c.push_back({"noisy_topk", sparse(RouterKind::kNoisyTopK, 2, [](SparseMoEOptions& o) {
                 o.importance_coef(0.1).load_coef(0.1).activation(moe::Activation::kGELU);
               })});
  c.push_back({"noisy_topk_unfused", sparse(RouterKind::kNoisyTopK, 2, [](SparseMoEOptions& o) {
                 o.balance_coef(0.1);  // the balance loss needs the logits: the unfused gate
               })});
  c.push_back({"frozen_random", sparse(RouterKind::kFrozenRandom, 2, [](SparseMoEOptions&) {})});
  c.push_back({"hyper", [](int W) {
                 return routed(moe::nn::HyperRouterMoE(moe::nn::HyperRouterMoEOptions(kD, 2 * W)
                                                           .top_k(2)
                                                           .hyper_hidden(8)
                                                           .balance_coef(0.1)
                                                           .hidden_size(5))
                                   .ptr());
               }});
  c.push_back(
      {"expert_choice", [](int W) {
         const auto ro =
             moe::ExpertChoiceRouterOptions(kD, 2 * W).capacity_factor(1.5).z_loss_coef(0.01).name(
                 "ECMoE");
         return moe::nn::RoutedMoE(moe::nn::RoutedMoEOptions(
             kD, [ro] { return moe::ExpertChoiceRouter(ro).ptr(); },
             moe::ExpertBankOptions(2 * W, kD, 5)));
       }});
  c.push_back({"top_any", [](int W) {
                 auto o =
                     moe::nn::TopAnyMoEOptions(kD, 2 * W).initial_experts(2 * W).hidden_size(5);
                 return routed(moe::nn::TopAnyMoE(o).ptr());
               }});
  c.push_back({"hierarchical", [](int W) {
                 // W groups of 4 experts: one group per rank (Shazeer's layout).
                 return routed(moe::nn::HierarchicalMoE(moe::nn::HierarchicalMoEOptions(kD, W, 4)
                                                            .top_k(2)
                                                            .importance_coef(0.1)
                                                            .load_coef(0.1)
                                                            .hidden_size(5))
                                   .ptr());
               }});
  return c;
}

// Router weights large enough that routing is not a near-tie everywhere (the routers start at
// zero or at 0.02), and for `skew`, a bias that sends every token to rank 0's experts.
void perturb(moe::nn::RoutedMoEImpl& layer, bool skew) {
  torch::NoGradGuard no_grad;
  for (auto& p : layer.named_parameters()) {
    if (p.key().rfind("experts.", 0) == 0) continue;
    if (p.key().find("hypernet") != std::string::npos) continue;
    p.value().normal_(0, 0.7);
    if (skew && p.key() == "router.bias") {
      p.value().fill_(-20);
      p.value().narrow(0, 0, 2).fill_(20);
    }
  }
}

void check_case(const std::shared_ptr<moe::dist::ProcessGroup>& group, const Case& c,
                at::ScalarType dtype) {
  const int W = group->size(), r = group->rank();
  SCOPED_TRACE(::testing::Message() << c.name << ", rank " << r << " of " << W << ", " << dtype);
  std::vector<int64_t> tokens;
  int64_t T = 0, first = 0;
  for (int j = 0; j < W; ++j) {
    tokens.push_back(std::vector<int64_t>{9, 0, 13, 6}[j % 4]);
    if (j < r) first += tokens.back();
    T += tokens.back();
  }
  torch::manual_seed(3);
  auto ref = c.make(W);
  perturb(*ref, c.skew);
  ref->to(dtype);
  auto dist_layer =
      moe::nn::RoutedMoE(std::dynamic_pointer_cast<moe::nn::RoutedMoEImpl>(ref->clone()));
  dist_layer->distribute_experts(group);
  const auto x_all = at::randn({T, kD}, at::TensorOptions(dtype)).requires_grad_();
  const auto probe = at::randn({T, kD}, at::TensorOptions(dtype));

  // One process, the whole batch.
  torch::manual_seed(17);
  const auto ref_out = ref->forward(x_all);
  ((ref_out.output * probe).sum() + ref_out.aux_loss).backward();

  // This rank's share: its loss is W times its share of the task loss, plus the aux loss.
  torch::manual_seed(17);
  const auto x = x_all.detach().narrow(0, first, tokens[r]).clone().requires_grad_();
  const auto out = dist_layer->forward(x);
  const auto mine = probe.narrow(0, first, tokens[r]);
  (double(W) * (out.output * mine).sum() + out.aux_loss).backward();
  moe::nn::synchronize_gradients(group, *dist_layer);

  // bfloat16 experts (float32 router): the engine's and the exchange's roundings differ by a few
  // bf16 ulps.
  const double tol = dtype == at::kDouble ? 1e-10 : dtype == at::kFloat ? 1e-5 : 3e-2;
  EXPECT_CLOSE(out.output, ref_out.output.narrow(0, first, tokens[r]), tol, tol);
  EXPECT_CLOSE(out.aux_loss, ref_out.aux_loss, tol, tol);
  EXPECT_TRUE(at::equal(out.stats.tokens_per_expert, ref_out.stats.tokens_per_expert));
  EXPECT_CLOSE(out.stats.importance, ref_out.stats.importance, tol, tol);
  EXPECT_CLOSE(out.stats.load, ref_out.stats.load, tol, tol);
  EXPECT_EQ(out.stats.assigned.item<int64_t>(), ref_out.stats.assigned.item<int64_t>());
  EXPECT_EQ(out.stats.dropped.item<int64_t>(), ref_out.stats.dropped.item<int64_t>());
  EXPECT_TRUE(at::equal(out.stats.experts_per_token, ref_out.stats.experts_per_token));
  for (const auto& [name, term] : ref_out.stats.loss_terms)
    EXPECT_NEAR(out.stats.loss_term(name), term.item<double>(), tol) << name;
  if (c.skew) {  // every token at rank 0's experts
    EXPECT_EQ(ref_out.stats.tokens_per_expert.narrow(0, 2, 2 * W - 2).sum().item<int64_t>(), 0);
  }
  if (c.name == "switch_capacity") {  // the capacity drops, over the global batch
    EXPECT_GT(ref_out.stats.dropped.item<int64_t>(), 0);
  }
  if (tokens[r] > 0) {
    EXPECT_CLOSE(x.grad() / double(W), x_all.grad().narrow(0, first, tokens[r]), tol, tol);
  }

  const int64_t El = dist_layer->experts->options.num_experts();
  const auto ref_params = ref->named_parameters();
  for (const auto& p : dist_layer->named_parameters()) {
    SCOPED_TRACE(p.key());
    const auto& want = ref_params[p.key()];
    if (!want.grad().defined()) {
      EXPECT_FALSE(p.value().grad().defined() && p.value().grad().abs().sum().item<double>() > 0);
      continue;
    }
    ASSERT_TRUE(p.value().grad().defined());
    const auto expected =
        p.key().rfind("experts.", 0) == 0 ? want.grad().narrow(0, r * El, El) : want.grad();
    EXPECT_CLOSE(p.value().grad(), expected, tol, tol);
  }
}

// One training step with Adam and gradient clipping on the distributed layer equals the step in
// one process; gather_experts brings every expert and its optimizer state back.
void check_training_step(const std::shared_ptr<moe::dist::ProcessGroup>& group) {
  const int W = group->size(), r = group->rank();
  SCOPED_TRACE(::testing::Message() << "training step, rank " << r << " of " << W);
  const auto c = cases()[3];  // noisy top-k
  torch::manual_seed(3);
  auto ref = c.make(W);
  perturb(*ref, false);
  ref->to(at::kDouble);
  auto layer = moe::nn::RoutedMoE(std::dynamic_pointer_cast<moe::nn::RoutedMoEImpl>(ref->clone()));
  torch::optim::Adam ref_opt(ref->parameters(), torch::optim::AdamOptions(0.1));
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(0.1));
  layer->distribute_experts(group, &opt);
  const int64_t T = 8 * W;
  const auto x = at::randn({T, kD}, at::kDouble), probe = at::randn({T, kD}, at::kDouble);

  torch::manual_seed(5);
  const auto ref_out = ref->forward(x);
  ((ref_out.output * probe).sum() + ref_out.aux_loss).backward();
  const double ref_norm = torch::nn::utils::clip_grad_norm_(ref->parameters(), 0.5);
  ref_opt.step();

  torch::manual_seed(5);
  const auto mine = torch::indexing::Slice(r * 8, (r + 1) * 8);
  const auto out = layer->forward(x.index({mine}));
  (double(W) * (out.output * probe.index({mine})).sum() + out.aux_loss).backward();
  moe::nn::synchronize_gradients(group, *layer);
  const double norm = moe::nn::clip_gradient_norm(group, *layer, 0.5);
  EXPECT_NEAR(norm, ref_norm, 1e-10);
  EXPECT_GT(norm, 0.5);  // so that clipping changed the step
  opt.step();

  layer->gather_experts(&opt);
  EXPECT_EQ(layer->expert_group(), nullptr);
  EXPECT_EQ(layer->experts->options.num_experts(), 2 * W);
  const auto ref_params = ref->named_parameters();
  for (const auto& p : layer->named_parameters()) {
    SCOPED_TRACE(p.key());
    EXPECT_CLOSE(p.value(), ref_params[p.key()], 1e-10, 1e-10);
    const auto& a = static_cast<torch::optim::AdamParamState&>(
        *opt.state().at(c10::guts::to_string(p.value().unsafeGetTensorImpl())));
    const auto& b = static_cast<torch::optim::AdamParamState&>(
        *ref_opt.state().at(c10::guts::to_string(ref_params[p.key()].unsafeGetTensorImpl())));
    EXPECT_CLOSE(a.exp_avg(), b.exp_avg(), 1e-10, 1e-10);
    EXPECT_CLOSE(a.exp_avg_sq(), b.exp_avg_sq(), 1e-10, 1e-10);
  }
}

// Ranks that build different layers fail together, naming the difference; so do expert counts
// the ranks cannot share and DynMoE's resizing expert set.
void check_mismatches(const std::shared_ptr<moe::dist::ProcessGroup>& group) {
  const int W = group->size(), r = group->rank();
  auto make = [&](int64_t hidden) {
    torch::manual_seed(3);
    return moe::nn::SparseMoE(moe::nn::SparseMoEOptions(kD, 2 * W).top_k(2).hidden_size(hidden));
  };
  auto differs = make(r == W - 1 ? 7 : 5);
  EXPECT_TRUE(mt::throws_with(
      [&] { differs->distribute_experts(group); },
      {"rank 0 has hidden_size=5 but rank " + std::to_string(W - 1) + " has hidden_size=7"}));
  EXPECT_EQ(differs->expert_group(), nullptr);
  EXPECT_EQ(differs->experts->options.num_experts(), 2 * W);
  auto odd = moe::nn::SparseMoE(moe::nn::SparseMoEOptions(kD, 2 * W + 1).hidden_size(5));
  EXPECT_TRUE(mt::throws_with(
      [&] { odd->distribute_experts(group); },
      {"num_experts=" + std::to_string(2 * W + 1), "multiple of the process group's size"}));
  auto resize = moe::nn::TopAnyMoE(
      moe::nn::TopAnyMoEOptions(kD, 2 * W).storage(moe::nn::ExpertStorage::kResize).hidden_size(5));
  EXPECT_TRUE(mt::throws_with([&] { resize->distribute_experts(group); },
                              {"storage=resize changes the number of experts"}));
}

TEST(RoutedLayersRank, Checks) {
  if (my_rank() < 0) GTEST_SKIP() << "one rank of ExpertParallelLayers.EqualOneProcess";
  const auto group = moe::testing::dist::join();
  for (const auto& c : cases())
    for (const auto dtype : {at::kDouble, at::kFloat}) check_case(group, c, dtype);
  check_case(group, cases()[0], at::kBFloat16);
  check_training_step(group);
  check_mismatches(group);
  group->barrier();
  if (::testing::Test::HasFailure()) std::exit(1);
}

TEST(ExpertParallelLayers, EqualOneProcess) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  for (const int W : {2, 4})
    EXPECT_TRUE(moe::testing::dist::ranks_pass(W, "RoutedLayersRank.Checks"));
}

}  // namespace
