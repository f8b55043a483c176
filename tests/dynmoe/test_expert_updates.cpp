// DynMoE's adaptive expert set (docs/algorithms.md §2.4, §2.7): the update rules on crafted
// records, the schedules, recording, true resizing with the optimizer state carried, and bad input.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <cmath>

#include "moe/nn/top_any_moe.h"
#include "support/test_util.h"

namespace {

using moe::nn::ExpertSchedule;
using moe::nn::ExpertStorage;
using moe::nn::NewExpertInit;
using moe::nn::RoutingRecords;
using moe::nn::TopAnyMoE;
using moe::nn::TopAnyMoEOptions;
namespace mt = moe::testing;

RoutingRecords records(std::vector<int64_t> counts, std::vector<float> unrouted) {
  RoutingRecords r;
  r.expert_counts = torch::tensor(counts, at::kLong);
  r.unrouted_sum = torch::tensor(unrouted);
  return r;
}

TopAnyMoE pool_layer(int64_t E_max, int64_t E0, uint64_t seed = 1) {
  torch::manual_seed(seed);
  return TopAnyMoE(TopAnyMoEOptions(3, E_max).initial_experts(E0).hidden_size(4));
}

TEST(ExpertUpdate, RemovesExpertsWithoutActivations) {
  auto layer = pool_layer(5, 4);
  const auto w1 = layer->experts->w1.clone();
  const auto u = layer->update_experts(records({3, 0, 2, 0, 0}, {0, 0, 0}));
  EXPECT_EQ(u.removed, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(u.added, -1);  // Σ R_S = 0
  EXPECT_EQ(u.active_before, 4);
  EXPECT_EQ(u.active_after, 2);
  EXPECT_TRUE(torch::equal(layer->router->active, torch::tensor({1.f, 0.f, 1.f, 0.f, 0.f})));
  EXPECT_TRUE(torch::equal(layer->experts->w1, w1));  // expert weights untouched
}

TEST(ExpertUpdate, AddsOneExpertFromTheUnroutedInputsAtTheLowestFreeSlot) {
  auto layer = pool_layer(5, 3);
  const auto w1 = layer->experts->w1.clone();
  {
    torch::NoGradGuard g;
    layer->router->threshold.fill_(0.7);
  }
  const auto u = layer->update_experts(records({1, 4, 2, 0, 0}, {3, 0, 4}));
  EXPECT_TRUE(u.removed.empty());
  EXPECT_EQ(u.added, 3);
  EXPECT_TRUE(torch::equal(layer->router->active, torch::tensor({1.f, 1.f, 1.f, 1.f, 0.f})));
  EXPECT_CLOSE(layer->router->weight[3], torch::tensor({0.6f, 0.f, 0.8f}), 0, 1e-7);
  EXPECT_EQ(layer->router->threshold[3].item<float>(), 0.f);
  EXPECT_EQ(layer->router->threshold[0].item<float>(), 0.7f);
  EXPECT_TRUE(torch::equal(layer->experts->w1, w1));  // kKeep: the slot keeps its FFN
}

TEST(ExpertUpdate, ASlotRemovedInTheSameUpdateIsReusedFirst) {
  auto layer = pool_layer(4, 3);
  const auto u = layer->update_experts(records({2, 0, 5, 0}, {1, 1, 1}));
  EXPECT_EQ(u.removed, (std::vector<int64_t>{1}));
  EXPECT_EQ(u.added, 1);
  EXPECT_TRUE(torch::equal(layer->router->active, torch::tensor({1.f, 1.f, 1.f, 0.f})));
  const float v = 1.f / std::sqrt(3.f);
  EXPECT_CLOSE(layer->router->weight[1], torch::tensor({v, v, v}), 0, 1e-7);
}

TEST(ExpertUpdate, NoAdditionWhenTheComponentSumIsZeroOrNoSlotIsFree) {
  auto layer = pool_layer(3, 3);
  const auto w = layer->router->weight.clone();
  // R_S = (1, -1, 0): its norm is not 0 but the sum of its components is (the reference's test).
  auto u = layer->update_experts(records({1, 1, 1}, {1, -1, 0}));
  EXPECT_FALSE(u.changed());
  u = layer->update_experts(records({1, 1, 1}, {2, 0, 0}));  // no free expert
  EXPECT_FALSE(u.changed());
  EXPECT_TRUE(torch::equal(layer->router->weight, w));
  EXPECT_EQ(layer->num_active_experts(), 3);
}

TEST(ExpertUpdate, NeverLeavesALayerWithoutExperts) {
  auto layer = pool_layer(3, 2);
  const auto u = layer->update_experts(records({0, 0, 0}, {0, 0, 0}));
  EXPECT_FALSE(u.changed());
  EXPECT_EQ(layer->num_active_experts(), 2);
}

TEST(ExpertUpdate, ReinitialisesTheAddedExpertWhenAsked) {
  torch::manual_seed(4);
  TopAnyMoE layer(TopAnyMoEOptions(3, 3).initial_experts(2).hidden_size(4).new_expert_init(
      NewExpertInit::kReinit));
  const auto w1 = layer->experts->w1.clone();
  layer->update_experts(records({1, 1, 0}, {1, 2, 3}));
  EXPECT_TRUE(torch::equal(layer->experts->w1.slice(0, 0, 2), w1.slice(0, 0, 2)));
  EXPECT_FALSE(torch::equal(layer->experts->w1[2], w1[2]));
}

TEST(ExpertUpdate, ExpertsStartAsCopiesOfOneNetworkByDefault) {
  auto layer = pool_layer(4, 2);
  for (int64_t e = 1; e < 4; ++e) {
    EXPECT_TRUE(torch::equal(layer->experts->w1[e], layer->experts->w1[0]));
    EXPECT_TRUE(torch::equal(layer->experts->w2[e], layer->experts->w2[0]));
  }
  torch::manual_seed(1);
  TopAnyMoE independent(TopAnyMoEOptions(3, 4).hidden_size(4).copy_initial_expert(false));
  EXPECT_FALSE(torch::equal(independent->experts->w1[1], independent->experts->w1[0]));
}

TEST(ExpertRecording, CountsActivationsAndSumsUnroutedInputs) {
  auto layer = pool_layer(4, 3, 8);
  {
    torch::NoGradGuard g;
    layer->router->threshold.normal_(0.0, 0.8);
  }
  layer->begin_recording();
  const auto x1 = torch::randn({20, 3}), x2 = torch::randn({15, 3});
  const auto o1 = layer->forward(x1), o2 = layer->forward(x2);
  const auto rec = layer->finish_recording();
  EXPECT_FALSE(layer->recording());
  const auto used = [](const moe::MoEOutput& o) { return (o.routing.expert_index >= 0); };
  EXPECT_TRUE(torch::equal(rec.expert_counts, used(o1).sum(0) + used(o2).sum(0)));
  const auto none1 = used(o1).sum(1) == 0, none2 = used(o2).sum(1) == 0;
  EXPECT_CLOSE(rec.unrouted_sum, x1.index({none1}).sum(0) + x2.index({none2}).sum(0), 1e-6, 1e-6);
  EXPECT_EQ(rec.tokens, 35);
  EXPECT_EQ(rec.unrouted_tokens(), none1.sum().item<int64_t>() + none2.sum().item<int64_t>());
  EXPECT_GT(rec.unrouted_tokens(), 0);
}

TEST(ExpertSchedule, ValuesAtChosenCounts) {
  const auto w = ExpertSchedule::window(300, 900);
  for (int64_t c : {300, 1200, 2100}) EXPECT_TRUE(w.begins_before(c)) << c;
  for (int64_t c : {1, 299, 301, 600, 900}) EXPECT_FALSE(w.begins_before(c)) << c;
  for (int64_t c : {600, 1500, 2400}) EXPECT_TRUE(w.updates_after(c)) << c;
  for (int64_t c : {300, 599, 601, 1200}) EXPECT_FALSE(w.updates_after(c)) << c;
  const auto e = ExpertSchedule::epoch_fraction(8);  // begin at index 4, update after index 6
  for (int64_t c : {5, 13, 21}) EXPECT_TRUE(e.begins_before(c)) << c;
  for (int64_t c : {7, 15}) EXPECT_TRUE(e.updates_after(c)) << c;
  for (int64_t c : {4, 6, 8, 12}) EXPECT_FALSE(e.begins_before(c) || e.updates_after(c)) << c;
  const auto s = ExpertSchedule::every_step();
  EXPECT_TRUE(s.begins_before(1) && s.updates_after(1) && s.updates_after(17));
  const auto m = ExpertSchedule::manual();
  EXPECT_FALSE(m.begins_before(1) || m.updates_after(1));
}

TEST(ExpertSchedule, WindowDrivesRecordingAndUpdatesInPoolMode) {
  torch::manual_seed(2);
  TopAnyMoE layer(TopAnyMoEOptions(3, 4).initial_experts(2).hidden_size(4).schedule(
      ExpertSchedule::window(2, 5)));
  const auto x = torch::randn({6, 3});
  std::vector<bool> recording_after;
  for (int c = 1; c <= 9; ++c) {
    layer->forward(x);
    recording_after.push_back(layer->recording() || layer->update_pending());
    if (c == 4) {  // the window of forwards 2..4 ended after forward 4
      EXPECT_TRUE(layer->update_pending());
      EXPECT_FALSE(layer->recording());
    }
  }
  EXPECT_EQ(recording_after,
            (std::vector<bool>{false, true, true, true, false, false, true, true, true}));
  EXPECT_EQ(layer->forward_count(), 9);
  // Eval forwards do not advance the schedule.
  layer->eval();
  layer->forward(x);
  EXPECT_EQ(layer->forward_count(), 9);
}

TEST(ExpertSchedule, ResizeModeRequiresTheUpdateToBeApplied) {
  torch::manual_seed(2);
  TopAnyMoE layer(TopAnyMoEOptions(3, 4)
                      .initial_experts(2)
                      .hidden_size(4)
                      .storage(ExpertStorage::kResize)
                      .schedule(ExpertSchedule::every_step()));
  const auto x = torch::randn({6, 3});
  layer->forward(x);
  EXPECT_TRUE(layer->update_pending());
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(x); },
                              {"TopAnyMoE", "pending", "apply_expert_updates"}));
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-3));
  const auto updates = moe::nn::apply_expert_updates(*layer, &opt);
  EXPECT_EQ(updates.size(), 1u);
  EXPECT_FALSE(layer->update_pending());
  layer->forward(x);
}

// Resizing: survivors keep their parameters, outputs and Adam moments bit for bit; the new expert
// is appended with R_S/||R_S||, threshold 0, the initial network and zero moments.
TEST(ExpertResize, KeepsSurvivorsAndTheirOptimizerStateBitIdentical) {
  const int64_t d = 4, h = 5;
  torch::manual_seed(12);
  TopAnyMoE layer(TopAnyMoEOptions(d, 6)
                      .initial_experts(4)
                      .hidden_size(h)
                      .activation(moe::Activation::kSwiGLU)
                      .expert_bias(true)
                      .storage(ExpertStorage::kResize));
  const auto initial_w1 = layer->experts->w1[0].clone();
  {
    torch::NoGradGuard g;
    layer->router->threshold.fill_(-2.0);  // every token uses every expert: all get gradients
  }
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({16, d});
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    auto o = layer->forward(x);
    (o.output.pow(2).mean() + o.aux_loss).backward();
    opt.step();
  }
  auto moments = [&](const torch::Tensor& p) {
    auto& st = static_cast<torch::optim::AdamParamState&>(
        *opt.state().at(c10::guts::to_string(p.unsafeGetTensorImpl())));
    return std::make_pair(st.exp_avg().clone(), st.exp_avg_sq().clone());
  };
  const auto w1 = layer->experts->w1.clone(), w3 = layer->experts->w3.clone();
  const auto rw = layer->router->weight.clone();
  const auto [m_w1, v_w1] = moments(layer->experts->w1);
  const auto [m_rw, v_rw] = moments(layer->router->weight);
  // Each expert's output on x, through the bank alone.
  auto expert_out = [&](int64_t e) {
    const auto idx = torch::full({16, 1}, e, at::kLong);
    const auto plan = moe::build_routing_plan(idx, layer->num_experts());
    torch::NoGradGuard g;
    return layer->experts->forward(x, plan, torch::ones({16}));
  };
  std::vector<torch::Tensor> before;
  for (int64_t e = 0; e < 4; ++e) before.push_back(expert_out(e));

  const auto u = layer->update_experts(records({5, 0, 3, 1}, {1, 2, 2, 0}), &opt);
  EXPECT_EQ(u.removed, (std::vector<int64_t>{1}));
  EXPECT_EQ(u.added, 3);
  ASSERT_EQ(layer->num_experts(), 4);
  EXPECT_EQ(layer->experts->w1.size(0), 4);
  EXPECT_EQ(layer->router->active.size(0), 4);
  const auto keep = torch::tensor({0, 2, 3}, at::kLong);
  EXPECT_TRUE(mt::bitwise_equal(layer->experts->w1.slice(0, 0, 3), w1.index_select(0, keep)));
  EXPECT_TRUE(mt::bitwise_equal(layer->experts->w3.slice(0, 0, 3), w3.index_select(0, keep)));
  EXPECT_TRUE(mt::bitwise_equal(layer->router->weight.slice(0, 0, 3), rw.index_select(0, keep)));
  const auto [m_w1b, v_w1b] = moments(layer->experts->w1);
  const auto [m_rwb, v_rwb] = moments(layer->router->weight);
  EXPECT_TRUE(mt::bitwise_equal(m_w1b.slice(0, 0, 3), m_w1.index_select(0, keep)));
  EXPECT_TRUE(mt::bitwise_equal(v_w1b.slice(0, 0, 3), v_w1.index_select(0, keep)));
  EXPECT_TRUE(mt::bitwise_equal(m_rwb.slice(0, 0, 3), m_rw.index_select(0, keep)));
  EXPECT_EQ(m_w1b[3].abs().max().item<float>(), 0.f);
  EXPECT_EQ(v_rwb[3].abs().max().item<float>(), 0.f);
  for (int64_t i = 0; i < 3; ++i)
    EXPECT_TRUE(mt::bitwise_equal(expert_out(i), before[keep[i].item<int64_t>()])) << i;
  // The new expert.
  EXPECT_CLOSE(layer->router->weight[3], torch::tensor({1.f, 2.f, 2.f, 0.f}) / 3.f, 0, 1e-7);
  EXPECT_EQ(layer->router->threshold[3].item<float>(), 0.f);
  EXPECT_TRUE(torch::equal(layer->experts->w1[3], initial_w1));
  // Training goes on with the carried state.
  opt.zero_grad();
  auto o = layer->forward(x);
  (o.output.pow(2).mean() + o.aux_loss).backward();
  opt.step();
  EXPECT_EQ(layer->experts->w1.grad().size(0), 4);
}

TEST(ExpertResize, GrowsBeyondTheInitialAllocationUpToMaxExperts) {
  torch::manual_seed(3);
  TopAnyMoE layer(
      TopAnyMoEOptions(3, 4).initial_experts(1).hidden_size(2).storage(ExpertStorage::kResize));
  torch::optim::SGD opt(layer->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  for (int64_t n = 2; n <= 4; ++n) {
    std::vector<int64_t> counts(static_cast<size_t>(n - 1), 1);
    const auto u = layer->update_experts(records(counts, {1, 0, 0}), &opt);
    EXPECT_EQ(u.added, n - 1);
    EXPECT_EQ(layer->num_experts(), n);
    EXPECT_EQ(layer->experts->w2.size(0), n);
  }
  // At max_experts nothing more is added.
  const auto u = layer->update_experts(records({1, 1, 1, 1}, {1, 0, 0}), &opt);
  EXPECT_FALSE(u.changed());
  EXPECT_EQ(layer->forward(torch::randn({5, 3})).output.size(0), 5);
}

TEST(TopAnyMoEBadInput, ClearErrors) {
  EXPECT_TRUE(mt::throws_with([] { TopAnyMoE(TopAnyMoEOptions(4, 2).initial_experts(3)); },
                              {"initial_experts", "max_experts=2", "3"}));
  EXPECT_TRUE(mt::throws_with([] { TopAnyMoE(TopAnyMoEOptions(4, 0)); }, {"max_experts", "0"}));
  EXPECT_TRUE(mt::throws_with([] { TopAnyMoE(TopAnyMoEOptions(4, 2).initial_experts(0)); },
                              {"initial_experts", "0"}));
  EXPECT_TRUE(mt::throws_with([] { ExpertSchedule::window(5, 5); }, {"period", "5"}));
  EXPECT_TRUE(mt::throws_with([] { ExpertSchedule::epoch_fraction(10, 0.8, 0.5); },
                              {"begin=0.8", "end=0.5"}));
  auto layer = pool_layer(3, 2);
  EXPECT_TRUE(mt::throws_with(
      [&] {
        layer->update_experts(records({1, 1, 1}, {NAN, 0, 0}));
      },
      {"unrouted_sum", "non-finite"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        layer->update_experts(records({1, -1, 1}, {0, 0, 0}));
      },
      {"expert_counts", ">= 0"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        layer->update_experts(records({1, 1}, {0, 0, 0}));
      },
      {"expert_counts", "E=3"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        layer->update_experts(records({1, 1, 1}, {0, 0}));
      },
      {"unrouted_sum", "d_model=3"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->resize_experts(2); }, {"resize", "pool"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->finish_recording(); }, {"not recording"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(torch::randn({4, 5})); }, {"d_model=3"}));
  auto x = torch::randn({4, 3});
  x[2][1] = NAN;
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(x); }, {"TopAnyMoE", "1 of 4", "non-finite"}));
  // With kSkip the bad token is routed nowhere and the others are unaffected.
  torch::manual_seed(1);
  TopAnyMoE skip(TopAnyMoEOptions(3, 3).initial_experts(2).hidden_size(4).non_finite(
      moe::NonFinitePolicy::kSkip));
  const auto out = skip->forward(x);
  EXPECT_EQ(out.stats.skipped_tokens(), 1);
  EXPECT_TRUE(at::isfinite(out.output).all().item<bool>());
}

}  // namespace

namespace {

// The layer's output carries the four unweighted terms of §2.3 (checked by hand against the
// router in TopAnyRouter.AuxiliaryTermsMatchHandComputations): no second routing pass to read them.
TEST(TopAnyMoEOutput, CarriesItsFourLossTerms) {
  auto layer = pool_layer(6, 4, 3);
  layer->train();
  const auto x = torch::randn({20, 3});
  const auto out = layer->forward(x);
  const auto routed = layer->router->decide(x);
  for (const char* name : {"diversity", "simplicity", "balance", "efficiency"}) {
    ASSERT_TRUE(moe::find_loss_term(out.stats.loss_terms, name).defined()) << name;
    EXPECT_DOUBLE_EQ(out.stats.loss_term(name), routed.term(name)) << name;
  }
  EXPECT_TRUE(std::isnan(out.stats.loss_term("load")));  // not a DynMoE term
}

}  // namespace
