// The portable backend (src/engine/portable/: ATen operations only, the backend of every device
// without its own) against the CPU backend on the same problems: y and every gradient, for every
// activation, float64/float32/bfloat16, with and without biases, one- and two-layer experts, the
// hidden layer kept or recomputed, empty experts and unused slots, dL/dx and dL/dw skipped. The CPU
// backend is itself checked against dense float64 references and finite differences
// (test_gradients.cpp, test_engine_widths.cpp), and the `portable.` copies of those tests run them
// on this backend (tests/CMakeLists.txt). Both backends also run each problem on a padded plan.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/portable/portable_backend.h"
#include "moe/plan.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
namespace engine = moe::engine;

struct Case {
  Activation act;
  at::ScalarType dtype;
  bool two_layers, bias, keep_hidden;
  int64_t T, E;
};

std::string name(const Case& c) {
  return std::string(moe::to_string(c.act)) + " " + c10::toString(c.dtype) +
         (c.two_layers ? " two layers" : " one layer") + (c.bias ? " bias" : "") +
         (c.keep_hidden ? " kept" : " recomputed") + " T=" + std::to_string(c.T) +
         " E=" + std::to_string(c.E);
}

struct Problem {
  engine::ExpertProblem p;
  at::Tensor dy;
  at::Tensor index;  // the slot table of the plan
};

Problem make(const Case& c) {
  torch::manual_seed(3);
  constexpr int64_t d = 6, h = 5, out = 4, K = 2;
  auto index = torch::randint(-1, c.E, {c.T, K}, torch::kLong);
  if (c.E > 2) index.masked_fill_(index == 1, 0);  // expert 1 gets nothing
  const auto plan = moe::build_routing_plan(index, c.E);
  const auto o = at::TensorOptions(c.dtype);
  Problem r;
  auto& p = r.p;
  p.x = at::randn({c.T, d}, o);
  p.pair_weight = at::rand({plan.num_rows()}, o);
  p.w1 = at::randn({c.E, d, h}, o) * 0.5;
  if (moe::is_gated(c.act)) p.w3 = at::randn({c.E, d, h}, o) * 0.5;
  if (c.bias) p.b1 = at::randn({c.E, h}, o);
  if (c.two_layers) {
    p.w2 = at::randn({c.E, h, out}, o) * 0.5;
    if (c.bias) p.b2 = at::randn({c.E, out}, o);
  }
  p.expert_offsets = plan.expert_offsets;
  p.token_index = plan.token_index;
  p.act = c.act;
  r.dy = at::randn({c.T, c.two_layers ? out : h}, o);
  r.index = index;
  return r;
}

// The same problem on a padded plan (include/moe/plan.h): the same pairs first, then one padding
// row per unused slot, whose weights (not 0 here) the backends must ignore.
engine::ExpertProblem padded(const Problem& pr, int64_t E) {
  const auto plan = moe::build_routing_plan(pr.index, E, moe::PlanLayout::kPadded);
  auto q = pr.p;
  q.token_index = plan.token_index;
  q.expert_offsets = plan.expert_offsets;
  q.pair_slot = plan.pair_slot;
  q.slots_per_token = plan.slots_per_token;
  const int64_t padding = plan.num_rows() - pr.p.token_index.size(0);
  q.pair_weight = at::cat({pr.p.pair_weight, at::rand({padding}, pr.p.pair_weight.options()) + 1});
  return q;
}

void expect_same(const at::Tensor& a, const at::Tensor& b, double tol, const char* what) {
  ASSERT_EQ(a.defined(), b.defined()) << what;
  if (!a.defined()) return;
  EXPECT_EQ(a.scalar_type(), b.scalar_type()) << what;
  // Absolute error relative to the largest value: a gradient sums many rows.
  const double scale = std::max(1.0, b.abs().max().item<double>());
  EXPECT_CLOSE(a, b, tol, tol * scale) << what;
}

TEST(PortableBackend, EqualsTheCpuBackend) {
  const auto cpu = engine::cpu::make_cpu_backend();
  const auto portable = engine::portable::make_portable_backend();
  int cases = 0;
  for (const auto act : {Activation::kReLU, Activation::kGELU, Activation::kSiLU,
                         Activation::kSwiGLU, Activation::kGEGLU})
    for (const auto dtype : {at::kDouble, at::kFloat, at::kBFloat16})
      for (const bool two_layers : {true, false})
        for (const bool bias : {false, true})
          for (const bool keep : {true, false})
            for (const auto& [T, E] : std::vector<std::pair<int64_t, int64_t>>{{24, 6}, {300, 2}}) {
              const Case c{act, dtype, two_layers, bias, keep, T, E};
              SCOPED_TRACE(name(c));
              const auto pr = make(c);
              // bf16: both round each result once from float32 sums; the sums' order differs.
              const double tol = dtype == at::kDouble ? 1e-12 : dtype == at::kFloat ? 1e-5 : 2e-2;
              const auto a = cpu->forward(pr.p, keep), b = portable->forward(pr.p, keep);
              expect_same(a.y, b.y, tol, "y");
              for (const bool want_x : {true, false}) {
                engine::WantedGradients want;
                want.x = want_x;
                want.pair_weight = !want_x;
                const auto ga = cpu->backward(pr.p, a.hidden, pr.dy, want);
                const auto gb = portable->backward(pr.p, b.hidden, pr.dy, want);
                expect_same(ga.x, gb.x, tol, "dx");
                expect_same(ga.pair_weight, gb.pair_weight, tol, "dpair_weight");
                expect_same(ga.w1, gb.w1, tol, "dw1");
                expect_same(ga.w2, gb.w2, tol, "dw2");
                expect_same(ga.w3, gb.w3, tol, "dw3");
                expect_same(ga.b1, gb.b1, tol, "db1");
                expect_same(ga.b2, gb.b2, tol, "db2");
                if (E > 2) {  // expert 1 has no pairs
                  EXPECT_EQ(gb.w1[1].abs().sum().item<double>(), 0);
                }
                // Both backends on the padded plan: the compact plan's results, and a zero
                // gradient for the padding rows' weights.
                const auto q = padded(pr, E);
                const int64_t P = pr.p.token_index.size(0);
                for (const auto& backend : {cpu, portable}) {
                  const auto f = backend->forward(q, keep);
                  expect_same(f.y, a.y, tol, "padded y");
                  const auto g = backend->backward(q, f.hidden, pr.dy, want);
                  expect_same(g.x, ga.x, tol, "padded dx");
                  expect_same(g.w1, ga.w1, tol, "padded dw1");
                  expect_same(g.w2, ga.w2, tol, "padded dw2");
                  expect_same(g.b1, ga.b1, tol, "padded db1");
                  ASSERT_EQ(g.pair_weight.defined(), want.pair_weight);
                  if (want.pair_weight) {
                    ASSERT_EQ(g.pair_weight.size(0), q.token_index.size(0));
                    expect_same(g.pair_weight.narrow(0, 0, P), ga.pair_weight, tol,
                                "padded dpair_weight");
                    EXPECT_EQ(g.pair_weight.narrow(0, P, g.pair_weight.size(0) - P)
                                  .abs()
                                  .sum()
                                  .item<double>(),
                              0);
                  }
                }
              }
              ++cases;
            }
  EXPECT_EQ(cases, 5 * 3 * 2 * 2 * 2 * 2);
}

TEST(PortableBackend, EveryDeviceWithoutItsOwnBackendGetsIt) {
  // The CPU has its own; a device type without one (here the meta device, where nothing runs)
  // gets the portable backend instead of an error.
  const auto cpu = engine::backend_for(c10::Device(c10::kCPU));
  const auto meta = engine::backend_for(c10::Device(c10::kMeta));
  ASSERT_NE(meta, nullptr);
  const char* forced = std::getenv("MOE_ENGINE_BACKEND");
  if (forced != nullptr && std::string(forced) == "portable") {
    EXPECT_EQ(cpu, meta);  // MOE_ENGINE_BACKEND=portable: the CPU runs it too
  } else {
    EXPECT_NE(cpu, meta);
  }
}

}  // namespace
