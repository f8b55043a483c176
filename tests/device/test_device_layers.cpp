// Every other layer on the device under test (device_under_test.h), forward and backward, against
// the same layer in float64 on the CPU: expert choice, HyperRouter with its k schedule,
// SMoE-Dropout, DynMoE's top-any while recording, the hierarchical MoE, MMoE with dense and with
// top-2 gates, a two-level PLE. The float64 twin holds the same (dtype-rounded) weights and takes
// the same input; on CUDA it runs the CPU's own path, which the layer's own test program checks
// against independent references (tests/layers, tests/hyperrouter, tests/dynmoe, tests/multitask),
// so this compares the device's routing, plans and engine with a proven computation. In the
// portable.* copy on the CPU the twin takes the portable path too (MOE_ENGINE_BACKEND is one
// setting per process): there this checks the table and the lower precisions against float64;
// the portable path's independent checks are the portable.* copies of those test programs.
// GShard's layer is here with its second expert always kept (its default draws it at random).
// float32 (TF32 off on CUDA) to 1e-5, bfloat16 to an NMSE of 1e-4; routing tables must be equal.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "device/device_under_test.h"
#include "moe/moe.h"
#include "support/test_util.h"

namespace {

using namespace moe;
using namespace moe::nn;
namespace mt = moe::testing;

// Widths that are multiples of 8, which the grouped GEMMs take (docs/gpu.md).
constexpr int64_t kD = 8, kE = 6, kH = 16, kT = 40;

struct Outputs {
  std::vector<torch::Tensor> ys;
  torch::Tensor routing;  // [T, K] expert ids, or undefined
};

struct Model {
  std::shared_ptr<torch::nn::Module> module;
  std::function<Outputs(const torch::Tensor&)> forward;
};

Outputs single(const MoEOutput& o) { return {{o.output}, o.routing.expert_index}; }
Outputs multi(const MultiTaskOutput& o) { return {o.outputs, {}}; }

// Each factory builds the same weights on every call (a fixed seed), then spreads every parameter
// (routers start at zero, which would leave only ties to route on).
Model spread(Model m) {
  torch::NoGradGuard g;
  for (auto& p : m.module->parameters()) p.normal_(0.0, 0.6);
  return m;
}

const std::map<std::string, std::function<Model()>>& factories() {
  static const std::map<std::string, std::function<Model()>> f{
      {"expert_choice",
       [] {
         torch::manual_seed(11);
         const auto ec = ExpertChoiceRouterOptions(kD, kE);
         RoutedMoE m(RoutedMoEOptions(
             kD, [ec] { return ExpertChoiceRouter(ec).ptr(); },
             ExpertBankOptions(kE, kD, kH).activation(Activation::kSwiGLU)));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"hyper_router_k_schedule",
       [] {
         torch::manual_seed(12);
         HyperRouterMoE m(HyperRouterMoEOptions(kD, kE).hyper_hidden(16).k_schedule(
             TopKSchedule(TopKSchedule::Mode::kLinearIncrease, 2, kE, 10)));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"smoe_dropout",
       [] {
         torch::manual_seed(13);
         HyperRouterMoE m(HyperRouterMoEOptions(kD, kE).router(HyperRouterKind::kFrozenRandom));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"top_any_recording",
       [] {
         torch::manual_seed(14);
         TopAnyMoE m(TopAnyMoEOptions(kD, kE).initial_experts(4));
         m->begin_recording();
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"hierarchical_2x3",
       [] {
         torch::manual_seed(15);
         HierarchicalMoE m(
             HierarchicalMoEOptions(kD, 2, 3).hidden_size(kH).top_k(2).noisy_gating(false));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"gshard_second_always",
       [] {
         // GShard with its second expert always kept: the random policy would draw from the
         // device's generator, which the CPU twin cannot repeat.
         torch::manual_seed(19);
         GShardMoE m(
             GShardMoEOptions(kD, {kE}).hidden_size(kH).second_policy_train(SecondPolicy::kAll));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return single(m(x)); }});
       }},
      {"mmoe_dense_gates",
       [] {
         torch::manual_seed(16);
         MMoE m(MMoEOptions(kD, kE, 2));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return multi(m(x)); }});
       }},
      {"mmoe_top2_gates",
       [] {
         torch::manual_seed(17);
         MMoE m(MMoEOptions(kD, kE, 2).gate(TaskGateOptions().top_k(2)));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return multi(m(x)); }});
       }},
      {"ple_2_levels",
       [] {
         torch::manual_seed(18);
         PLE m(PLEOptions(kD, 2).levels(2).specific_experts(1).shared_experts(2));
         return spread({m.ptr(), [m](const torch::Tensor& x) mutable { return multi(m(x)); }});
       }},
  };
  return f;
}

// The bf16 bound of a gradient: the multi-task models' pass through every bf16 rounding of a
// deeper backward (experts, gates, towers), for which tests/multitask measured NMSEs of 1.3e-3 to
// 2.6e-3 and bounds them by 1e-2; a routed layer's experts and input, a few roundings deep, by
// 1e-4; its router's, sums of differences of bf16 expert outputs (∝ o_i - o_j), by 1e-3
// (tests/device/test_device_routers.cpp).
double bf16_gradient_nmse(const std::string& model, const std::string& parameter) {
  if (model.rfind("mmoe", 0) == 0 || model.rfind("ple", 0) == 0) return 1e-2;
  const bool expert = parameter.rfind("experts.", 0) == 0 || parameter == "x";
  return expert ? 1e-4 : 1e-3;
}

using Case = std::tuple<std::string, c10::ScalarType>;

class DeviceLayers : public ::testing::TestWithParam<Case> {};

TEST_P(DeviceLayers, ForwardAndBackwardMatchTheFloat64Twin) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = mt::device_under_test();
  const auto& [name, dtype] = GetParam();
  const auto& factory = factories().at(name);
  Model on_device = factory(), twin = factory();
  on_device.module->to(dtype);
  on_device.module->to(device);
  twin.module->to(dtype);  // the same rounding, then exact in float64
  twin.module->to(at::kDouble);
  on_device.module->train(true);
  twin.module->train(true);

  torch::manual_seed(21);
  const auto x_cpu = torch::randn({kT, kD}).to(dtype);
  auto x =
      x_cpu.to(at::TensorOptions(device), /*non_blocking=*/false, /*copy=*/true).requires_grad_();
  auto x64 = x_cpu.to(at::kDouble).requires_grad_();
  const Outputs got = on_device.forward(x);
  const Outputs ref = twin.forward(x64);
  ASSERT_EQ(got.ys.size(), ref.ys.size());
  if (ref.routing.defined()) {
    ASSERT_TRUE(got.routing.defined());
    ASSERT_TRUE(torch::equal(got.routing.to(at::kCPU), ref.routing))
        << "device routing\n"
        << got.routing << "\nfloat64 twin\n"
        << ref.routing;
  }
  torch::Tensor loss, loss64;
  for (size_t i = 0; i < ref.ys.size(); ++i) {
    ASSERT_EQ(got.ys[i].device(), device);
    mt::expect_matches(got.ys[i], ref.ys[i], dtype, "output " + std::to_string(i));
    const auto upstream = torch::randn(ref.ys[i].sizes()).to(dtype);
    const auto l = (got.ys[i].to(at::kFloat) * upstream.to(device).to(at::kFloat)).sum();
    const auto l64 = (ref.ys[i] * upstream.to(at::kDouble)).sum();
    loss = loss.defined() ? loss + l : l;
    loss64 = loss64.defined() ? loss64 + l64 : l64;
  }
  loss.backward();
  loss64.backward();
  mt::expect_matches(x.grad(), x64.grad(), dtype, "dL/dx", bf16_gradient_nmse(name, "x"));
  const auto params = on_device.module->named_parameters();
  const auto params64 = twin.module->named_parameters();
  int64_t compared = 0;
  for (const auto& p : params) {
    if (!p.value().requires_grad()) continue;
    const auto& p64 = params64[p.key()];
    if (!p64.grad().defined()) {
      // A parameter the loss does not reach (a gate the schedule has not opened yet).
      EXPECT_FALSE(p.value().grad().defined() && p.value().grad().abs().max().item<double>() > 0)
          << p.key() << " has a gradient on the device and none in the twin";
      continue;
    }
    // Under bf16 every gradient, a float32 router's too, is computed from bf16 expert outputs.
    mt::expect_matches(p.value().grad(), p64.grad(), dtype, "dL/d " + p.key(),
                       bf16_gradient_nmse(name, p.key()));
    ++compared;
  }
  EXPECT_GT(compared, 0);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (const auto& [name, f] : factories()) cases.emplace_back(name, dtype);
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Table, DeviceLayers, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) == at::kBFloat16 ? "_bf16" : "_f32");
                         });

}  // namespace
