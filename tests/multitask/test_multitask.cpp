// Multi-task models (docs/algorithms.md §4) vs hand-written dense computations in float64, their
// gradients vs finite differences, the synthetic generator, the multi-task loss and the metrics.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "moe/data/mmoe_synthetic.h"
#include "moe/multitask_loss.h"
#include "moe/nn/multitask.h"
#include "support/test_util.h"

namespace {

namespace mt = moe::testing;
using moe::nn::MMoE;
using moe::nn::MMoEOptions;
using moe::nn::PLE;
using moe::nn::PLEOptions;
using moe::nn::TaskGateOptions;

using Params = torch::OrderedDict<std::string, torch::Tensor>;

// Linear layers "prefix{i}.weight/bias", i = 0 .. layers - 1, with ReLU between them (and after the
// last when relu_last).
torch::Tensor hand_mlp(const Params& p, const std::string& prefix, int layers, torch::Tensor h,
                       bool relu_last) {
  for (int i = 0; i < layers; ++i) {
    const auto key = prefix + std::to_string(i);
    h = h.mm(p[key + ".weight"].t()) + p[key + ".bias"];
    if (i + 1 < layers || relu_last) h = h.relu();
  }
  return h;
}

// Expert e of a stacked group: relu(x·w{l}[e] + b{l}[e]) per layer l = 1 .. layers, written with
// loops over rows.
torch::Tensor hand_expert(const Params& p, const std::string& prefix, int64_t layers, int64_t e,
                          const torch::Tensor& x) {
  auto h = x;
  for (int64_t l = 1; l <= layers; ++l) {
    const auto W = p[prefix + "w" + std::to_string(l)][e];
    const auto b = p[prefix + "b" + std::to_string(l)][e];
    auto out = torch::zeros({h.size(0), W.size(1)}, at::kDouble);
    for (int64_t t = 0; t < h.size(0); ++t) out[t] = (h[t].unsqueeze(1) * W).sum(0) + b;
    h = out.relu();
  }
  return h;
}

torch::Tensor hand_softmax_gate(const Params& p, const std::string& prefix,
                                const torch::Tensor& x) {
  auto z = x.mm(p[prefix + "weight"].t());
  if (p.contains(prefix + "bias")) z = z + p[prefix + "bias"];
  return (z - std::get<0>(z.max(1, true))).exp() /
         (z - std::get<0>(z.max(1, true))).exp().sum(1, true);
}

TEST(MMoE, MatchesAHandComputation) {
  for (bool one_gate : {false, true}) {
    torch::manual_seed(1);
    MMoE m(MMoEOptions(6, 4, 3).expert_hidden({5, 4}).tower_hidden({3}).one_gate(one_gate).gate(
        TaskGateOptions().bias(true)));
    m->to(at::kDouble);
    const auto p = m->named_parameters();
    const auto x = torch::randn({9, 6}, at::kDouble);
    const auto out = m->forward(x);
    ASSERT_EQ(out.outputs.size(), 3u);
    std::vector<torch::Tensor> experts;
    for (int64_t e = 0; e < 4; ++e) experts.push_back(hand_expert(p, "experts.", 2, e, x));
    for (int64_t k = 0; k < 3; ++k) {
      const auto g = hand_softmax_gate(p, "gates." + std::to_string(one_gate ? 0 : k) + ".", x);
      auto f = torch::zeros({9, 4}, at::kDouble);
      for (int64_t e = 0; e < 4; ++e) f = f + g.select(1, e).unsqueeze(1) * experts[e];
      const auto y = hand_mlp(p, "towers." + std::to_string(k) + ".", 2, f, false);
      EXPECT_CLOSE(out.outputs[k], y, 1e-12, 1e-13) << "task " << k << " one_gate " << one_gate;
    }
    // Gates sum to 1: the per-expert mean weights of each gate sum to 1.
    for (const auto& mass : out.gate_mass[0]) EXPECT_NEAR(mass.sum().item<double>(), 1.0, 1e-12);
    EXPECT_EQ(out.gate_mass[0].size(), one_gate ? 1u : 3u);
  }
}

TEST(MMoE, CompatibilityGateHiddenLayerAndBiasInit) {
  torch::manual_seed(2);
  MMoE m(MMoEOptions(5, 3, 2).expert_hidden({4}).tower_hidden({}).gate(
      TaskGateOptions().hidden({6}).bias_init(0.1)));
  m->to(at::kDouble);
  const auto p = m->named_parameters();
  EXPECT_TRUE(torch::allclose(p["gates.0.bias"], torch::full({3}, 0.1, at::kDouble)));
  const auto x = torch::randn({7, 5}, at::kDouble);
  const auto out = m->forward(x);
  const auto h = hand_mlp(p, "gates.1.hidden.", 1, x, true);
  const auto g = hand_softmax_gate(p, "gates.1.", h);
  auto f = torch::zeros({7, 4}, at::kDouble);
  for (int64_t e = 0; e < 3; ++e)
    f = f + g.select(1, e).unsqueeze(1) * hand_expert(p, "experts.", 1, e, x);
  EXPECT_CLOSE(out.outputs[1], hand_mlp(p, "towers.1.", 1, f, false), 1e-12, 1e-13);
}

TEST(MMoE, SparseGatesSelectTopKThroughThePlan) {
  torch::manual_seed(3);
  MMoE m(MMoEOptions(6, 5, 2).expert_hidden({4}).tower_hidden({3}).gate(
      TaskGateOptions().top_k(2).balance_coef(0.01)));
  m->to(at::kDouble);
  const auto p = m->named_parameters();
  const auto x = torch::randn({11, 6}, at::kDouble);
  const auto out = m->forward(x);
  EXPECT_GT(out.aux_loss.item<double>(), 0.0);
  for (int64_t k = 0; k < 2; ++k) {
    const auto dense = hand_softmax_gate(p, "gates." + std::to_string(k) + ".", x);
    // Keep the two largest per row, renormalised.
    const auto top = std::get<1>(dense.topk(2, 1));
    const auto kept = torch::zeros_like(dense).scatter(1, top, dense.gather(1, top));
    const auto g = kept / kept.sum(1, true);
    auto f = torch::zeros({11, 4}, at::kDouble);
    for (int64_t e = 0; e < 5; ++e)
      f = f + g.select(1, e).unsqueeze(1) * hand_expert(p, "experts.", 1, e, x);
    EXPECT_CLOSE(out.outputs[k], hand_mlp(p, "towers." + std::to_string(k) + ".", 2, f, false),
                 1e-12, 1e-13);
    EXPECT_NEAR(out.gate_mass[0][k].sum().item<double>(), 1.0, 1e-12);
  }
  m->eval();
  EXPECT_EQ(m->forward(x).aux_loss.item<double>(), 0.0);
}

// CGC by hand: task k mixes its own experts and the shared experts with softmax(W_k x).
TEST(PLE, OneLevelEqualsAHandWrittenCGC) {
  torch::manual_seed(4);
  PLE m(PLEOptions(5, 2)
            .levels(1)
            .specific_experts(2)
            .shared_experts(3)
            .expert_hidden({4})
            .tower_hidden({3}));
  m->to(at::kDouble);
  const auto p = m->named_parameters();
  EXPECT_FALSE(p.contains("levels.0.shared_gate.weight"));  // no shared gate on the last level
  const auto x = torch::randn({8, 5}, at::kDouble);
  const auto out = m->forward(x);
  for (int64_t k = 0; k < 2; ++k) {
    const std::string ks = std::to_string(k);
    const auto g = hand_softmax_gate(p, "levels.0.task_gates." + ks + ".", x);
    auto f = torch::zeros({8, 4}, at::kDouble);
    for (int64_t e = 0; e < 2; ++e)
      f = f + g.select(1, e).unsqueeze(1) *
                  hand_expert(p, "levels.0.task_experts." + ks + ".", 1, e, x);
    for (int64_t e = 0; e < 3; ++e)
      f = f + g.select(1, 2 + e).unsqueeze(1) * hand_expert(p, "levels.0.shared_experts.", 1, e, x);
    EXPECT_CLOSE(out.outputs[k], hand_mlp(p, "towers." + ks + ".", 2, f, false), 1e-12, 1e-13);
  }
}

// Two levels: level 2's task gates read level 1's task outputs; level 1's shared gate mixes all
// of level 1's experts into level 2's shared input.
TEST(PLE, TwoLevelsMatchAHandComputation) {
  torch::manual_seed(5);
  const int64_t K = 2, mk = 1, ms = 2;
  PLE m(PLEOptions(4, K)
            .levels(2)
            .specific_experts(mk)
            .shared_experts(ms)
            .expert_hidden({3})
            .tower_hidden({}));
  m->to(at::kDouble);
  const auto p = m->named_parameters();
  const auto x = torch::randn({6, 4}, at::kDouble);
  auto level = [&](int j, const std::vector<torch::Tensor>& in, bool last) {
    const std::string L = "levels." + std::to_string(j) + ".";
    std::vector<torch::Tensor> own(K), shared(ms), out;
    for (int64_t k = 0; k < K; ++k)
      own[k] = hand_expert(p, L + "task_experts." + std::to_string(k) + ".", 1, 0, in[k]);
    for (int64_t e = 0; e < ms; ++e) shared[e] = hand_expert(p, L + "shared_experts.", 1, e, in[K]);
    for (int64_t k = 0; k < K; ++k) {
      const auto g = hand_softmax_gate(p, L + "task_gates." + std::to_string(k) + ".", in[k]);
      auto f = g.select(1, 0).unsqueeze(1) * own[k];
      for (int64_t e = 0; e < ms; ++e) f = f + g.select(1, 1 + e).unsqueeze(1) * shared[e];
      out.push_back(f);
    }
    if (!last) {
      const auto g = hand_softmax_gate(p, L + "shared_gate.", in[K]);
      torch::Tensor f = torch::zeros_like(own[0]);
      for (int64_t k = 0; k < K; ++k) f = f + g.select(1, k).unsqueeze(1) * own[k];
      for (int64_t e = 0; e < ms; ++e) f = f + g.select(1, K + e).unsqueeze(1) * shared[e];
      out.push_back(f);
    }
    return out;
  };
  const auto h1 = level(0, {x, x, x}, false);
  const auto h2 = level(1, h1, true);
  const auto out = m->forward(x);
  for (int64_t k = 0; k < K; ++k)
    EXPECT_CLOSE(out.outputs[k], hand_mlp(p, "towers." + std::to_string(k) + ".", 1, h2[k], false),
                 1e-12, 1e-13);
  ASSERT_EQ(out.gate_mass.size(), 2u);
  EXPECT_EQ(out.gate_mass[0].size(), 3u);  // two task gates + the shared gate
  EXPECT_EQ(out.gate_mass[1].size(), 2u);
}

TEST(SharedBottom, MatchesAHandComputation) {
  torch::manual_seed(6);
  moe::nn::SharedBottom m(moe::nn::SharedBottomOptions(5, 2).bottom_hidden({7}).tower_hidden({3}));
  m->to(at::kDouble);
  const auto p = m->named_parameters();
  const auto x = torch::randn({4, 5}, at::kDouble);
  const auto out = m->forward(x);
  const auto h = hand_mlp(p, "bottom.", 1, x, true);
  for (int64_t k = 0; k < 2; ++k)
    EXPECT_CLOSE(out.outputs[k], hand_mlp(p, "towers." + std::to_string(k) + ".", 2, h, false),
                 1e-12, 1e-13);
}

// Every parameter's gradient (a sample of entries) vs central differences, float64.
void check_fd(torch::nn::Module& m, const std::function<torch::Tensor()>& loss) {
  for (auto& p : m.parameters())
    if (p.grad().defined()) p.mutable_grad().zero_();
  loss().backward();
  const double eps = 1e-6;
  for (const auto& item : m.named_parameters()) {
    const auto& t = item.value();
    ASSERT_TRUE(t.grad().defined()) << item.key();
    const auto g = t.grad().reshape(-1);
    auto flat = t.detach().view(-1);
    for (int64_t i = 0; i < flat.numel(); i += std::max<int64_t>(1, flat.numel() / 3)) {
      torch::NoGradGuard ng;
      const double orig = flat[i].item<double>();
      flat[i] = orig + eps;
      const double lp = loss().item<double>();
      flat[i] = orig - eps;
      const double lm = loss().item<double>();
      flat[i] = orig;
      const double fd = (lp - lm) / (2 * eps);
      EXPECT_NEAR(g[i].item<double>(), fd, 1e-7 + 1e-6 * std::abs(fd))
          << item.key() << "[" << i << "]";
    }
  }
}

TEST(MultiTaskGradients, MatchFiniteDifferences) {
  const auto x = torch::randn({10, 4}, at::kDouble);
  const auto c0 = torch::randn({10, 1}, at::kDouble), c1 = torch::randn({10, 1}, at::kDouble);
  torch::manual_seed(7);
  MMoE mm(MMoEOptions(4, 3, 2).expert_hidden({5}).tower_hidden({3}));
  mm->to(at::kDouble);
  check_fd(*mm, [&] {
    const auto o = mm->forward(x);
    return (o.outputs[0] * c0).sum() + (o.outputs[1] * c1).sum();
  });
  PLE ple(PLEOptions(4, 2)
              .levels(2)
              .specific_experts(1)
              .shared_experts(2)
              .expert_hidden({3})
              .tower_hidden({2}));
  ple->to(at::kDouble);
  check_fd(*ple, [&] {
    const auto o = ple->forward(x);
    return (o.outputs[0] * c0).sum() + (o.outputs[1] * c1).sum();
  });
}

TEST(MMoESynthetic, WeightCosineIsPAndLabelCorrelationIsReported) {
  for (double p : {-1.0, -0.3, 0.0, 0.5, 0.9, 1.0}) {
    moe::data::MMoESynthetic g(moe::data::MMoESyntheticOptions().correlation(p).seed(3));
    EXPECT_NEAR(g.weight_cosine(), p, 1e-12) << p;
    EXPECT_NEAR(g.w1().norm().item<double>(), 1.0, 1e-12);
    EXPECT_NEAR(g.w2().norm().item<double>(), 1.0, 1e-12);
  }
  // Linear labels without noise: the Pearson correlation is p up to sampling.
  moe::data::MMoESynthetic lin(
      moe::data::MMoESyntheticOptions().correlation(0.5).sine_terms(0).noise_std(0).seed(1));
  const auto b = lin.sample(100000, 2);
  EXPECT_NEAR(moe::pearson(b.y.select(1, 0), b.y.select(1, 1)), 0.5, 0.01);
  // Same seed, same data; the labels follow the formula.
  moe::data::MMoESynthetic g(
      moe::data::MMoESyntheticOptions().correlation(0.2).noise_std(0).seed(4));
  const auto s1 = g.sample(50, 9), s2 = g.sample(50, 9);
  EXPECT_TRUE(torch::equal(s1.x, s2.x) && torch::equal(s1.y, s2.y));
  EXPECT_THROW(moe::data::MMoESynthetic(moe::data::MMoESyntheticOptions().correlation(1.5)),
               c10::ValueError);
  EXPECT_TRUE(mt::throws_with(
      [] { moe::data::MMoESynthetic(moe::data::MMoESyntheticOptions().correlation(-1.01)); },
      {"correlation", "[-1, 1]", "-1.01"}));
}

TEST(MultiTaskLoss, MaskedWeightedAndDecayed) {
  moe::MultiTaskLoss loss(
      {{moe::TaskType::kRegression, moe::TaskType::kBinary}, {2.0, 1.0}, {0.5, 1.0}});
  const auto y0 = torch::tensor({1.0, 2.0, 3.0}, at::kDouble).requires_grad_(true);
  const auto y1 = torch::tensor({0.0, 2.0, -1.0}, at::kDouble).requires_grad_(true);
  const auto targets = torch::tensor({{0.0, 1.0}, {2.0, 0.0}, {5.0, 1.0}}, at::kDouble);
  const auto mask = torch::tensor({{1, 0}, {0, 0}, {1, 0}}, at::kBool);  // task 1 has no sample
  std::vector<torch::Tensor> per;
  const auto total = loss({y0, y1}, targets, mask, /*t=*/2, &per);
  // Task 0: ((1-0)² + (3-5)²) / 2 = 2.5; weight 2·0.5² = 0.5. Task 1: no valid sample → 0.
  EXPECT_NEAR(per[0].item<double>(), 2.5, 1e-12);
  EXPECT_EQ(per[1].item<double>(), 0.0);
  EXPECT_NEAR(total.item<double>(), 0.5 * 2.5, 1e-12);
  total.backward();
  EXPECT_TRUE(at::isfinite(y1.grad()).all().item<bool>());
  EXPECT_EQ(y1.grad().abs().max().item<double>(), 0.0);
  // Labels outside a task's sample space stored as NaN: neither the loss nor the gradient sees
  // them.
  const auto y2 = torch::tensor({0.5, -0.5, 1.0}, at::kDouble).requires_grad_(true);
  auto nan_targets = targets.clone();
  nan_targets[1][0] = NAN;
  nan_targets[0][1] = NAN;
  const auto nan_mask = torch::tensor({{1, 0}, {0, 1}, {1, 1}}, at::kBool);
  const auto l2 = loss({y2, y2 * 2}, nan_targets, nan_mask, 0);
  EXPECT_TRUE(std::isfinite(l2.item<double>()));
  l2.backward();
  EXPECT_TRUE(at::isfinite(y2.grad()).all().item<bool>());
  // BCE on logits vs its formula.
  const auto all = loss({y0, y1}, targets, {}, 0, &per);
  double bce = 0;
  for (auto [z, t] : {std::pair{0.0, 1.0}, {2.0, 0.0}, {-1.0, 1.0}})
    bce += -(t * std::log(1 / (1 + std::exp(-z))) + (1 - t) * std::log(1 - 1 / (1 + std::exp(-z))));
  EXPECT_NEAR(per[1].item<double>(), bce / 3, 1e-12);
  EXPECT_NEAR(all.item<double>(), 2.0 * per[0].item<double>() + per[1].item<double>(), 1e-12);
}

TEST(MultiTaskMetrics, AucAndMse) {
  // Pairs (pos, neg): (0.35 vs 0.1 ✓, 0.35 vs 0.4 ✗, 0.8 ✓ ✓) → 3/4.
  EXPECT_DOUBLE_EQ(moe::auc(torch::tensor({0.1, 0.4, 0.35, 0.8}), torch::tensor({0, 0, 1, 1})),
                   0.75);
  // A tie between a positive and a negative counts one half.
  EXPECT_DOUBLE_EQ(moe::auc(torch::tensor({0.5, 0.5}), torch::tensor({0, 1})), 0.5);
  EXPECT_TRUE(std::isnan(moe::auc(torch::tensor({0.1, 0.2}), torch::tensor({1, 1}))));
  EXPECT_DOUBLE_EQ(moe::auc(torch::tensor({0.9, 0.1, 0.2}), torch::tensor({1, 0, 1}),
                            torch::tensor({true, true, false})),
                   1.0);
  EXPECT_DOUBLE_EQ(moe::masked_mse(torch::tensor({1.0, 2.0}), torch::tensor({0.0, 0.0})), 2.5);
}

TEST(MultiTaskModules, CloneGivesAnIndependentEqualModel) {
  torch::manual_seed(8);
  PLE m(PLEOptions(4, 2).levels(2).expert_hidden({3}).tower_hidden({2}).gate(
      TaskGateOptions().bias(true)));
  auto c = std::dynamic_pointer_cast<moe::nn::PLEImpl>(m->clone());
  const auto x = torch::randn({5, 4});
  EXPECT_TRUE(torch::equal(c->forward(x).outputs[1], m->forward(x).outputs[1]));
  {
    torch::NoGradGuard g;
    for (auto& p : c->parameters()) p.add_(1.0);
  }
  EXPECT_FALSE(torch::equal(c->forward(x).outputs[1], m->forward(x).outputs[1]));
}

TEST(MultiTaskBadInput, ClearErrors) {
  EXPECT_TRUE(mt::throws_with([] { MMoE(MMoEOptions(4, 3, 0)); }, {"num_tasks", "0"}));
  EXPECT_TRUE(mt::throws_with([] { PLE(PLEOptions(4, 0)); }, {"num_tasks", "0"}));
  EXPECT_TRUE(mt::throws_with([] { MMoE(MMoEOptions(4, 3, 2).gate(TaskGateOptions().top_k(4))); },
                              {"top_k", "4"}));
  EXPECT_TRUE(mt::throws_with([] { PLE(PLEOptions(4, 2).levels(0)); }, {"levels", "0"}));
  EXPECT_TRUE(
      mt::throws_with([] { MMoE(MMoEOptions(4, 3, 2).expert_hidden({})); }, {"expert_hidden"}));
  EXPECT_TRUE(mt::throws_with(
      [] { moe::nn::SharedBottom(moe::nn::SharedBottomOptions(4, 2).bottom_hidden({})); },
      {"SharedBottom", "bottom_hidden"}));
  EXPECT_TRUE(mt::throws_with(
      [] {
        MMoE(MMoEOptions(4, 3, 2).towers({{8}, {8}, {4}}));
      },
      {"3 towers", "num_tasks=2"}));
  EXPECT_TRUE(
      mt::throws_with([] { PLE(PLEOptions(4, 3).towers({{8}})); }, {"1 towers", "num_tasks=3"}));
  MMoE m(MMoEOptions(4, 3, 2).towers({{5}, {2, 2}}));
  EXPECT_EQ(m->forward(torch::randn({3, 4})).outputs[1].sizes(), (std::vector<int64_t>{3, 1}));
  EXPECT_TRUE(mt::throws_with([&] { m->forward(torch::randn({3, 5})); }, {"MMoE", "d_in=4"}));
  moe::MultiTaskLoss loss({{moe::TaskType::kRegression, moe::TaskType::kRegression}, {}, {}});
  const auto y = torch::zeros({3, 1});
  EXPECT_TRUE(mt::throws_with(
      [&] {
        loss({y}, torch::zeros({3, 2}), {}, 0);
      },
      {"2 tasks but 1 outputs"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        loss({y, y}, torch::zeros({3, 3}), {}, 0);
      },
      {"targets must be [T, 2]"}));
  EXPECT_TRUE(mt::throws_with(
      [] {
        moe::MultiTaskLoss({{moe::TaskType::kBinary}, {1.0, 2.0}, {}});
      },
      {"1 task types but 2 initial weights"}));
}

// bf16 models (model->to(bf16)) against the same model in float64 on the same rounded weights and
// inputs: every product accumulates in float32 on every CPU (moe/matmul.h), so the outputs stay
// within NMSE 1e-5 of float64 (a few bf16 roundings; measured 3.8e-6 to 5.0e-6 on both paths,
// against 1.4e-5 to 3.8e-5 with LibTorch's bf16-accumulating loop of CPUs without bf16 dot
// products). The gradient of the first expert layer passes through every bf16 rounding of the
// backward: NMSE <= 1e-2 (measured 1.3e-3 and 2.6e-3; that loop: 1.8e-2 and 2.0e-2). Dense and
// sparse (top-2) gates.
TEST(MultiTaskBf16, MatchesFloat64OnRoundedWeights) {
  for (const int64_t top_k : {0, 2}) {
    SCOPED_TRACE(top_k);
    torch::manual_seed(30);  // a draw whose top-2 gates have no near-tie (asserted below)
    MMoE m(MMoEOptions(128, 4, 2)
               .expert_hidden({256, 128})
               .tower_hidden({64})
               .gate(TaskGateOptions().top_k(top_k)));
    m->to(at::kBFloat16);
    const auto x = torch::randn({64, 128}).to(at::kBFloat16);
    const auto g = torch::randn({64, 1}).to(at::kBFloat16);
    auto loss_of = [&](const moe::MultiTaskOutput& o, const torch::Tensor& gg) {
      return (o.outputs[0] * gg).sum() + (o.outputs[1] * gg).sum();
    };
    const auto out = m->forward(x);
    loss_of(out, g).backward();
    const auto dw = m->named_parameters()["experts.w1"].grad().clone();
    m->zero_grad();
    m->to(at::kDouble);
    if (top_k > 0) {  // the bf16 gates pick the float64 gates' experts: no near-tie in this draw
      for (const auto& gate : *m->gates) {
        const auto z = gate->as<moe::nn::TaskGateImpl>()->logits(x.to(at::kDouble));
        ASSERT_GT(mt::topk_margin(z, top_k), 1e-2) << "the draw has a near-tie: pick another seed";
      }
    }
    const auto ref = m->forward(x.to(at::kDouble));
    loss_of(ref, g.to(at::kDouble)).backward();
    for (int64_t k = 0; k < 2; ++k) {
      EXPECT_EQ(out.outputs[k].scalar_type(), at::kBFloat16);
      EXPECT_LE(mt::nmse(out.outputs[k], ref.outputs[k]), 1e-5) << "task " << k;
    }
    EXPECT_LE(mt::nmse(dw, m->named_parameters()["experts.w1"].grad()), 1e-2);
  }
}

}  // namespace
