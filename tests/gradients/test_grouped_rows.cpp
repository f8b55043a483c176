// The portable backend's grouped path (src/engine/portable/grouped_rows.h) against its per-expert
// path, on the CPU, forward and backward. LibTorch 1.13 has no aten::_grouped_mm, so this program
// registers a reference of it first, with the schema of PyTorch 2.8+ and the behaviour the path
// must survive: every output element the op leaves unwritten (rows past the last offset, an
// expert without rows in the 2D×2D form) is NaN, and operands whose non-unit stride is not a
// multiple of 16 bytes are refused. Where the LibTorch has the op, the real one runs instead
// (where it has a CPU kernel: PyTorch 2.9+).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/portable/grouped_mm.h"
#include "engine/portable/grouped_rows.h"
#include "engine/portable/portable_backend.h"
#include "moe/plan.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
namespace engine = moe::engine;

void check_layout(const at::Tensor& t, const char* name) {
  const int64_t n = t.dim();
  const auto rows = t.stride(n - 2), cols = t.stride(n - 1);
  const bool row_major = cols == 1, col_major = rows == 1;
  TORCH_CHECK(row_major || col_major, "reference _grouped_mm: ", name,
              " is neither row- nor column-major");
  const int64_t lead = row_major ? rows : cols;
  TORCH_CHECK((lead * t.element_size()) % 16 == 0 || t.size(row_major ? n - 2 : n - 1) == 1,
              "reference _grouped_mm: ", name, "'s stride ", lead,
              " is not a multiple of 16 bytes");
}

// The reference: products in float32, rounded once; unwritten elements NaN.
at::Tensor reference_grouped_mm(const at::Tensor& a, const at::Tensor& b,
                                const c10::optional<at::Tensor>& offs,
                                const c10::optional<at::Tensor>& bias,
                                c10::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(offs.has_value() && offs->scalar_type() == at::kInt && offs->dim() == 1,
              "reference _grouped_mm: offs must be 1-D int32");
  TORCH_CHECK(!bias.has_value() && !out_dtype.has_value(), "reference _grouped_mm: no bias");
  check_layout(a, "mat_a");
  check_layout(b, "mat_b");
  const auto ends = offs->to(at::kLong);
  const int64_t G = ends.size(0);
  std::vector<int64_t> e(ends.data_ptr<int64_t>(), ends.data_ptr<int64_t>() + G);
  const auto af = a.to(at::kFloat), bf = b.to(at::kFloat);
  at::Tensor out;
  if (b.dim() == 3) {  // [R, K] x [G, K, N] -> [R, N]
    TORCH_CHECK(b.size(0) == G, "reference _grouped_mm: ", G, " offsets for ", b.size(0),
                " groups");
    out = at::full({a.size(0), b.size(2)}, NAN, af.options());
    for (int64_t g = 0, start = 0; g < G; start = e[g++])
      if (e[g] > start)
        out.narrow(0, start, e[g] - start).copy_(af.narrow(0, start, e[g] - start).mm(bf[g]));
  } else {  // [M, R] x [R, N] -> [G, M, N], the groups splitting R
    out = at::full({G, a.size(0), b.size(1)}, NAN, af.options());
    for (int64_t g = 0, start = 0; g < G; start = e[g++])
      if (e[g] > start)
        out[g].copy_(af.narrow(1, start, e[g] - start).mm(bf.narrow(0, start, e[g] - start)));
  }
  return out.to(a.scalar_type());
}

constexpr const char* kSchema =
    "_grouped_mm(Tensor self, Tensor mat2, Tensor? offs=None, Tensor? bias=None, "
    "ScalarType? out_dtype=None) -> Tensor";

// Registered before main (before anything looks the op up), and only where the LibTorch lacks it.
const bool kReference = [] {
  if (c10::Dispatcher::singleton().findSchema({"aten::_grouped_mm", ""})) return false;
  static torch::Library library(torch::Library::FRAGMENT, "aten", c10::nullopt, __FILE__, __LINE__);
  library.def(kSchema, TORCH_FN(reference_grouped_mm));
  return true;
}();

struct Case {
  Activation act;
  bool two_layers, bias, keep;
  c10::ScalarType dtype;
};

TEST(GroupedRows, EqualTheOneGemmPerExpertPath) {
  if (!kReference) {
    try {
      engine::portable::grouped_mm(at::ones({8, 8}), at::ones({1, 8, 8}),
                                   at::full({1}, 8, at::kInt));
    } catch (const c10::Error&) {
      GTEST_SKIP() << "this LibTorch's aten::_grouped_mm has no CPU kernel (PyTorch 2.8)";
    }
  }
  const auto per_expert = engine::portable::make_portable_backend();
  constexpr int64_t T = 20, K = 2, E = 5, d = 8, h = 16, out = 8;
  int cases = 0;
  for (const auto act : {Activation::kReLU, Activation::kGELU, Activation::kSwiGLU})
    for (const bool two_layers : {true, false})
      for (const bool bias : {false, true})
        for (const bool keep : {true, false})
          for (const auto dtype : {at::kFloat, at::kBFloat16}) {
            SCOPED_TRACE(std::string(moe::to_string(act)) + (two_layers ? " two layers" : "") +
                         (bias ? " bias" : "") + (keep ? " kept" : " recomputed") + " " +
                         c10::toString(dtype));
            torch::manual_seed(11);
            auto index = at::randint(-1, E, {T, K}, at::kLong);
            index.masked_fill_(index == 3, 1);  // expert 3 gets no rows
            const auto plan = moe::build_routing_plan(index, E, moe::PlanLayout::kPadded);
            const auto o = at::TensorOptions(dtype);
            engine::ExpertProblem p;
            p.x = at::randn({T, d}, o);
            // The padding rows' weights are not 0 here: the path must ignore them.
            p.pair_weight = at::rand({plan.num_rows()}, o) + 0.5;
            p.w1 = at::randn({E, d, h}, o) * 0.5;
            if (moe::is_gated(act)) p.w3 = at::randn({E, d, h}, o) * 0.5;
            if (bias) p.b1 = at::randn({E, h}, o);
            if (two_layers) {
              p.w2 = at::randn({E, h, out}, o) * 0.5;
              if (bias) p.b2 = at::randn({E, out}, o);
            }
            p.expert_offsets = plan.expert_offsets;
            p.token_index = plan.token_index;
            p.pair_slot = plan.pair_slot;
            p.slots_per_token = K;
            p.act = act;
            const auto dy = at::randn({T, two_layers ? out : h}, o);
            // bf16: the grouped path rounds each product (and the biased pre-activation) to
            // bf16, the per-expert path on the CPU computes in float32 throughout, so compared by
            // NMSE there: 1e-3, and 2e-2 for ReLU, whose units within rounding of 0 switch off on
            // one side only (NMSE 5.7e-3 to 6.9e-3 measured with biases; a wrong row or mask
            // gives O(1)). float32 checks the path's logic elementwise.
            const double bf16_nmse = act == Activation::kReLU ? 2e-2 : 1e-3;
            auto expect_same = [&](const at::Tensor& got, const at::Tensor& want,
                                   const char* what) {
              ASSERT_EQ(got.defined(), want.defined()) << what;
              if (!want.defined()) return;
              EXPECT_EQ(got.scalar_type(), want.scalar_type()) << what;
              EXPECT_TRUE(at::isfinite(got).all().item<bool>()) << what;
              if (dtype == at::kFloat) {
                const double scale = std::max(1.0, want.abs().max().item<double>());
                EXPECT_CLOSE(got, want, 1e-5, 1e-5 * scale) << what;
              } else {
                EXPECT_LE(moe::testing::nmse(got, want), bf16_nmse) << what;
              }
            };
            const auto a = per_expert->forward(p, keep);
            const auto b = engine::portable::grouped_forward(p, keep);
            expect_same(b.y, a.y, "y");
            const engine::WantedGradients want;
            const auto ga = per_expert->backward(p, a.hidden, dy, want);
            const auto gb = engine::portable::grouped_backward(p, b.hidden, dy, want);
            expect_same(gb.x, ga.x, "dx");
            expect_same(gb.pair_weight, ga.pair_weight, "dpair_weight");
            expect_same(gb.w1, ga.w1, "dw1");
            expect_same(gb.w2, ga.w2, "dw2");
            expect_same(gb.w3, ga.w3, "dw3");
            expect_same(gb.b1, ga.b1, "db1");
            expect_same(gb.b2, ga.b2, "db2");
            EXPECT_EQ(gb.w1[3].abs().max().item<double>(), 0) << "the expert without rows";
            ++cases;
          }
  EXPECT_EQ(cases, 3 * 2 * 2 * 2 * 2);
}

}  // namespace
