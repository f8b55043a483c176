// bf16 experts with an fp32 router (docs/routing.md): the router keeps float32 weights and routes
// exactly like a float64 router on the same inputs; outputs and gradients match a float64
// reference computed from the same bf16-rounded inputs and weights: outputs within rtol 1.6e-2,
// atol 1e-2, gradients (three bf16 roundings deep) with NMSE <= 1e-4. The same bounds hold on both
// bf16 product paths (moe/cpu.h): the tests run each path this CPU has, and make test runs them
// again as if the CPU had no native bf16 (the no_native_bf16.* tests, tests/CMakeLists.txt).
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <tuple>

#include "moe/cpu.h"
#include "moe/matmul.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::cpu::Bf16Gemm;
namespace mt = moe::testing;

// Forces a bf16 product path for the scope (nullopt: the automatic choice).
struct PathScope {
  explicit PathScope(std::optional<Bf16Gemm> p) {
    if (p) moe::cpu::set_bf16_gemm_override(*p);
  }
  ~PathScope() { moe::cpu::clear_bf16_gemm_override(); }
};

// The native path computes correctly only on a CPU with bf16 dot products.
bool native_available() {
  moe::cpu::clear_bf16_gemm_override();
  return moe::cpu::bf16_gemm() == Bf16Gemm::kNative;
}

#define SKIP_WITHOUT_NATIVE_BF16()                                                            \
  if (native_available()) {                                                                   \
  } else                                                                                      \
    GTEST_SKIP() << "this process has no native bf16 products (" << moe::cpu::describe()      \
                 << "): LibTorch's bf16 product would accumulate in bf16, which is what the " \
                    "library avoids"

// Activation, forced path (auto / float32), recompute_hidden.
using Bf16Case = std::tuple<Activation, std::optional<Bf16Gemm>, bool>;

class Bf16Experts : public ::testing::TestWithParam<Bf16Case> {};

TEST_P(Bf16Experts, MatchFloat64ReferenceOnRoundedValues) {
  const auto [act, path, recompute] = GetParam();
  PathScope scope(path);
  const int64_t d = 32, E = 8, h = 48, T = 96;
  torch::manual_seed(12);
  moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(d, E)
                               .hidden_size(h)
                               .recompute_hidden(recompute)
                               .top_k(2)
                               .activation(act)
                               .router(moe::RouterKind::kNoisyTopK)
                               .router_zero_init(false)
                               .router_init_std(0.5));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w1.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->router->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(layer->router->noise_weight.scalar_type(), at::kFloat);
  layer->eval();

  auto x = torch::randn({T, d}).to(at::kBFloat16).requires_grad_();
  auto out = layer->forward(x);
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  EXPECT_EQ(out.routing.gate.scalar_type(), at::kFloat);

  // Routing: identical to a float64 router on the same (bf16) inputs.
  const auto xd = x.detach().to(at::kDouble);
  const auto logits = xd.matmul(layer->router->weight.to(at::kDouble).t());
  ASSERT_GT(mt::topk_margin(logits, 2), 1e-4) << "the draw has a near-tie: pick another seed";
  EXPECT_TRUE(torch::equal(out.routing.expert_index, mt::reference_topk_indices(logits, 2)));

  // Values: float64 reference from the bf16-rounded inputs and weights; its gates are recomputed
  // from its own x (softmax over the kept logits, eval mode), so dx includes the router path as the
  // module's.
  const auto& ex = layer->experts;
  auto w1 = ex->w1.detach().to(at::kDouble).requires_grad_();
  auto w2 = ex->w2.detach().to(at::kDouble).requires_grad_();
  auto w3 = ex->w3.defined() ? ex->w3.detach().to(at::kDouble).requires_grad_() : torch::Tensor();
  auto xr = xd.clone().requires_grad_();
  const auto idx = out.routing.expert_index;
  const auto ref_gate =
      at::softmax(xr.matmul(layer->router->weight.to(at::kDouble).t()).gather(1, idx), -1);
  auto ref = mt::dense_moe_reference(xr, idx, ref_gate, w1, w2, w3, {}, {}, act);
  EXPECT_CLOSE(out.output, ref, 1.6e-2, 1e-2);

  auto g = torch::randn({T, d}).to(at::kBFloat16);
  out.output.backward(g);
  ref.backward(g.to(at::kDouble));
  EXPECT_LE(mt::nmse(x.grad(), xr.grad()), 1e-4);
  EXPECT_LE(mt::nmse(ex->w1.grad(), w1.grad()), 1e-4);
  EXPECT_LE(mt::nmse(ex->w2.grad(), w2.grad()), 1e-4);
  if (w3.defined()) {
    EXPECT_LE(mt::nmse(ex->w3.grad(), w3.grad()), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Activations, Bf16Experts,
    ::testing::Combine(::testing::Values(Activation::kReLU, Activation::kGELU, Activation::kSwiGLU),
                       ::testing::Values(std::optional<Bf16Gemm>(),
                                         std::optional<Bf16Gemm>(Bf16Gemm::kFloat32)),
                       ::testing::Bool()),
    [](const auto& info) {
      return std::string(moe::to_string(std::get<0>(info.param))) +
             (std::get<1>(info.param) ? "_float32" : "_auto") +
             (std::get<2>(info.param) ? "_recompute" : "");
    });

TEST(Bf16, HierarchicalKeepsFloat32Gates) {
  moe::nn::HierarchicalMoE layer(moe::nn::HierarchicalMoEOptions(8, 2, 3).hidden_size(4));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w2.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->primary_router->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(layer->secondary_router->noise_weight.scalar_type(), at::kFloat);
  auto out = layer->forward(torch::randn({5, 8}).to(at::kBFloat16));
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  layer->to(at::kDouble);
  EXPECT_EQ(layer->primary_router->weight.scalar_type(), at::kDouble);
}

// The two paths on the same inputs: each within the bf16 bounds of the float64 reference (above),
// and within bf16 rounding of each other.
TEST(Bf16Paths, NativeAndFloat32AgreeOnTheSameInputs) {
  SKIP_WITHOUT_NATIVE_BF16();
  const int64_t d = 64, E = 4, h = 256, T = 128;
  for (const Activation act : {Activation::kReLU, Activation::kSwiGLU}) {
    SCOPED_TRACE(moe::to_string(act));
    torch::manual_seed(3);
    moe::nn::SparseMoE layer(
        moe::nn::SparseMoEOptions(d, E).hidden_size(h).top_k(2).activation(act));
    layer->to(at::kBFloat16);
    const auto x = torch::randn({T, d}).to(at::kBFloat16);
    const auto g = torch::randn({T, d}).to(at::kBFloat16);
    auto run = [&](Bf16Gemm path) {
      PathScope scope(path);
      layer->zero_grad();
      auto xi = x.clone().requires_grad_();
      auto out = layer->forward(xi);
      out.output.backward(g);
      return std::vector<torch::Tensor>{out.output.detach(), xi.grad(),
                                        layer->experts->w1.grad().clone(),
                                        layer->experts->w2.grad().clone()};
    };
    const auto native = run(Bf16Gemm::kNative);
    const auto fp32 = run(Bf16Gemm::kFloat32);
    EXPECT_CLOSE(fp32[0], native[0], 1.6e-2, 1e-2);
    for (size_t i = 1; i < native.size(); ++i) EXPECT_LE(mt::nmse(fp32[i], native[i]), 1e-4) << i;
    // Not the same computation: the float32 path keeps the hidden layer in float32.
    EXPECT_FALSE(mt::bitwise_equal(fp32[0], native[0]));
  }
}

// The decision's inputs. Under ONEDNN_MAX_CPU_ISA=AVX2 (the no_native_bf16 runs) the automatic
// choice must be float32 whatever the CPU.
TEST(Bf16Gemm, DecisionFollowsTheCpuTheCapAndLibTorchsSwitch) {
  moe::cpu::clear_bf16_gemm_override();
  const auto& f = moe::cpu::features();
  const char* forced = std::getenv("MOE_BF16_GEMM");
  if (forced != nullptr && std::string(forced) != "auto") {
    EXPECT_EQ(moe::cpu::to_string(moe::cpu::bf16_gemm()), std::string(forced));
    return;
  }
  // Without bf16 dot products, under a oneDNN cap, or with LibTorch's oneDNN off: float32.
  const bool capable = f.avx512 && (f.avx512_bf16 || f.amx_bf16);
  if (!capable || moe::cpu::onednn_isa_cap_excludes_bf16() ||
      !at::globalContext().userEnabledMkldnn()) {
    EXPECT_EQ(moe::cpu::bf16_gemm(), Bf16Gemm::kFloat32);
  }
  const bool was = at::globalContext().userEnabledMkldnn();
  at::globalContext().setUserEnabledMkldnn(false);  // torch.backends.mkldnn.enabled = False
  EXPECT_EQ(moe::cpu::bf16_gemm(), Bf16Gemm::kFloat32);
  at::globalContext().setUserEnabledMkldnn(was);
  moe::cpu::set_bf16_gemm_override(Bf16Gemm::kFloat32);
  EXPECT_EQ(moe::cpu::bf16_gemm(), Bf16Gemm::kFloat32);
  moe::cpu::clear_bf16_gemm_override();
}

TEST(Bf16Gemm, OneDnnCapNamesWithoutBf16Exclude) {
  const char* saved = std::getenv("ONEDNN_MAX_CPU_ISA");
  const std::string keep = saved != nullptr ? saved : "";
  const std::vector<std::pair<std::string, bool>> cases = {{"AVX2", true},
                                                           {"avx2", true},
                                                           {"AVX512_CORE", true},
                                                           {"AVX512_CORE_VNNI", true},
                                                           {"SSE41", true},
                                                           {"AVX512_CORE_BF16", false},
                                                           {"AVX512_CORE_AMX", false},
                                                           {"ALL", false},
                                                           {"", false}};
  for (const auto& [value, excludes] : cases) {
    setenv("ONEDNN_MAX_CPU_ISA", value.c_str(), 1);
    if (value.empty()) unsetenv("ONEDNN_MAX_CPU_ISA");
    // Unset, the older name DNNL_MAX_CPU_ISA would be read: only when it is unset too.
    if (!value.empty() || std::getenv("DNNL_MAX_CPU_ISA") == nullptr) {
      EXPECT_EQ(moe::cpu::onednn_isa_cap_excludes_bf16(), excludes) << value;
    }
  }
  if (saved != nullptr) {
    setenv("ONEDNN_MAX_CPU_ISA", keep.c_str(), 1);
  } else {
    unsetenv("ONEDNN_MAX_CPU_ISA");
  }
}

// CPUID as read by the library against the kernel's view of the same CPU.
TEST(Bf16Gemm, FeaturesAgreeWithProcCpuinfo) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      flags = line + " ";
      break;
    }
  if (flags.empty()) GTEST_SKIP() << "no x86 flags line in /proc/cpuinfo";
  auto has = [&](const std::string& f) { return flags.find(" " + f + " ") != std::string::npos; };
  const auto& f = moe::cpu::features();
  EXPECT_EQ(f.avx2, has("avx2") && has("fma"));
  EXPECT_EQ(f.avx512, has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq"));
  EXPECT_EQ(f.avx512_bf16, f.avx512 && has("avx512_bf16"));
  EXPECT_EQ(f.amx_bf16, has("amx_bf16") && has("amx_tile"));
  EXPECT_FALSE(f.model.empty());
  EXPECT_NE(moe::cpu::describe().find("bf16 GEMM"), std::string::npos);
}

// moe::ops products of bf16 operands accumulate in float32 on either path: a 512-term product is
// within 4e-3 (relative, Frobenius) of float64 on the same rounded values (a float32-accumulated
// product rounded once to bf16 measured 1.7e-3; LibTorch's generic bf16 loop 2.6e-2), and the
// gradients come back in bf16 within NMSE 1e-4.
TEST(Bf16Products, AccumulateInFloat32OnEitherPath) {
  std::vector<std::optional<Bf16Gemm>> paths = {Bf16Gemm::kFloat32};
  if (native_available()) paths.push_back(Bf16Gemm::kNative);
  torch::manual_seed(5);
  const auto a = torch::randn({256, 512}).to(at::kBFloat16);
  const auto b = torch::randn({512, 256}).to(at::kBFloat16);
  const auto bias = torch::randn({256}).to(at::kBFloat16);
  const auto ad = a.to(at::kDouble), bd = b.to(at::kDouble), biasd = bias.to(at::kDouble);
  auto rel = [](const torch::Tensor& x, const torch::Tensor& ref) {
    return ((x.to(at::kDouble) - ref).norm() / ref.norm()).item<double>();
  };
  for (const auto& path : paths) {
    PathScope scope(path);
    SCOPED_TRACE(moe::cpu::to_string(moe::cpu::bf16_gemm()));
    const auto ref = ad.mm(bd);
    EXPECT_LE(rel(moe::ops::mm(a, b), ref), 4e-3);
    EXPECT_LE(rel(moe::ops::matmul(a, b), ref), 4e-3);
    EXPECT_LE(rel(moe::ops::linear(a, b.t(), bias), ref + biasd), 4e-3);
    EXPECT_LE(rel(moe::ops::addmm(bias, a, b), ref + biasd), 4e-3);
    EXPECT_LE(rel(moe::ops::bmm(a.unsqueeze(0), b.unsqueeze(0))[0], ref), 4e-3);
    EXPECT_LE(rel(moe::ops::baddbmm(bias, a.unsqueeze(0), b.unsqueeze(0))[0], ref + biasd), 4e-3);
    EXPECT_LE(rel(moe::ops::einsum("ij,jk->ik", {a, b}), ref), 4e-3);
    EXPECT_EQ(moe::ops::mm(a, b).scalar_type(), at::kBFloat16);
    // Tiny products, which LibTorch never sends to oneDNN (its bf16 loop: 18% off here).
    const auto u = torch::randn({1, 4096}).to(at::kBFloat16);
    const auto v = torch::randn({4096, 1}).to(at::kBFloat16);
    EXPECT_LE(rel(moe::ops::mm(u, v), u.to(at::kDouble).mm(v.to(at::kDouble))), 4e-3);
    EXPECT_LE(rel(moe::ops::linear(u, v.t()), u.to(at::kDouble).mm(v.to(at::kDouble))), 4e-3);

    auto ag = a.clone().requires_grad_(), bg = b.clone().requires_grad_();
    auto adg = ad.clone().requires_grad_(), bdg = bd.clone().requires_grad_();
    const auto g = torch::randn({256, 256}).to(at::kBFloat16);
    moe::ops::mm(ag, bg).backward(g);
    adg.mm(bdg).backward(g.to(at::kDouble));
    EXPECT_EQ(ag.grad().scalar_type(), at::kBFloat16);
    EXPECT_LE(mt::nmse(ag.grad(), adg.grad()), 1e-4);
    EXPECT_LE(mt::nmse(bg.grad(), bdg.grad()), 1e-4);
  }
}

// The no_native_bf16 runs (tests/support/main.cpp) really are what they claim: OpenBLAS on the
// kernels OPENBLAS_CORETYPE names (Haswell, AVX2, unless the environment chose), LibTorch's oneDNN
// bf16 path off, oneDNN capped below bf16, the library on its float32 path.
TEST(Bf16Gemm, NoNativeBf16RunIsWhatItClaims) {
  const char* on = std::getenv("MOE_TEST_NO_NATIVE_BF16");
  if (on == nullptr || std::string(on) != "1")
    GTEST_SKIP() << "only in the no_native_bf16 runs (MOE_TEST_NO_NATIVE_BF16=1)";
  moe::cpu::clear_bf16_gemm_override();
  const auto corename = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  if (moe::cpu::features().avx2) {
    ASSERT_NE(core, nullptr);
  }
  if (corename != nullptr && core != nullptr) {
    std::string got = corename(), want = core;
    for (auto* s : {&got, &want})
      for (auto& ch : *s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    EXPECT_EQ(got, want);
  }
  EXPECT_FALSE(at::globalContext().userEnabledMkldnn());
  EXPECT_TRUE(moe::cpu::onednn_isa_cap_excludes_bf16());
  if (std::string(std::getenv("MOE_BF16_GEMM")) == "float32") {
    EXPECT_EQ(moe::cpu::bf16_gemm(), Bf16Gemm::kFloat32);
  }
}

// Experts with a row or two make products of at most 16³ multiply-adds, which LibTorch computes in
// its bf16-accumulating loop even where bf16 runs natively; the engine computes them in float32.
// d = 256 makes the error of that loop visible: NMSE 1.1e-4 of the output and dW2 through it,
// 2.7e-6 to 5.8e-6 in float32 (a few bf16 roundings), so the bound is 3e-5.
TEST(Bf16Experts, TinyExpertsAccumulateInFloat32) {
  for (const auto& path :
       {std::optional<Bf16Gemm>(), std::optional<Bf16Gemm>(Bf16Gemm::kFloat32)}) {
    PathScope scope(path);
    const int64_t d = 256, E = 16, h = 16, T = 16;
    torch::manual_seed(8);
    moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(d, E)
                                 .hidden_size(h)
                                 .top_k(1)
                                 .router(moe::RouterKind::kSoftmaxTopK)
                                 .router_zero_init(false)
                                 .router_init_std(0.5));
    layer->to(at::kBFloat16);
    layer->eval();
    auto x = torch::randn({T, d}).to(at::kBFloat16).requires_grad_();
    auto out = layer->forward(x);
    ASSERT_LE(out.stats.tokens_per_expert.max().item<int64_t>(), 3);  // tiny experts indeed
    const auto& ex = layer->experts;
    auto w1 = ex->w1.detach().to(at::kDouble).requires_grad_();
    auto w2 = ex->w2.detach().to(at::kDouble).requires_grad_();
    auto xr = x.detach().to(at::kDouble).requires_grad_();
    // The gates as the layer computed them (top-1 Switch-free softmax top-k renormalised: 1).
    const auto gate = out.routing.gate.detach().to(at::kDouble);
    auto ref = mt::dense_moe_reference(xr, out.routing.expert_index, gate, w1, w2, {}, {}, {},
                                       Activation::kReLU);
    EXPECT_LE(mt::nmse(out.output, ref), 3e-5);
    auto g = torch::randn({T, d}).to(at::kBFloat16);
    out.output.backward(g);
    ref.backward(g.to(at::kDouble));
    EXPECT_LE(mt::nmse(ex->w1.grad(), w1.grad()), 3e-5);
    EXPECT_LE(mt::nmse(ex->w2.grad(), w2.grad()), 3e-5);
    layer->zero_grad();
  }
}

}  // namespace
