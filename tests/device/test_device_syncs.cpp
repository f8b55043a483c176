// Host synchronisations per forward and backward on CUDA, counted by CUDA's own sync debug mode
// (every synchronising call the CUDA runtime makes through LibTorch: copies to the host, stream and
// device synchronisations, .item()). Without statistics and under NonFinitePolicy::kSkip, the
// only ones are the reads docs/gpu.md lists: the experts' segment bounds, once per engine call in
// each direction (none where the grouped GEMMs run), and the hierarchical router's group bounds.
// The CPU has no such counter: there tests/layers/test_host_reads.cpp counts the operations that
// would read on a device.
//
// CUDA's counter needs LibTorch's CUDA library, so this test is compiled in only when the build's
// LibTorch has CUDA (MOE_TEST_CUDA_SYNCS, tests/CMakeLists.txt); elsewhere it skips.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "device/device_under_test.h"
#include "engine/portable/grouped_rows.h"
#include "moe/moe.h"

#ifdef MOE_TEST_CUDA_SYNCS
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>
#endif

namespace {

using namespace moe;
using namespace moe::nn;

constexpr int64_t kD = 16, kE = 4, kH = 32, kT = 64;

#ifdef MOE_TEST_CUDA_SYNCS
// Counts the sync debug mode's warnings; other warnings go to the handler in place before. The
// autograd engine replays its worker threads' warnings on the thread that called backward, so
// the backward's synchronisations are counted too.
class SyncCounter : public c10::WarningHandler {
 public:
  SyncCounter() : previous_(c10::WarningUtils::get_warning_handler()) {
    c10::WarningUtils::set_warning_handler(this);
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  }
  ~SyncCounter() override {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    c10::WarningUtils::set_warning_handler(previous_);
  }
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("synchronizing CUDA operation") != std::string::npos) {
      ++count;
    } else {
      previous_->process(warning);
    }
  }
  int64_t count = 0;

 private:
  c10::WarningHandler* previous_;
};

// The host calls in f that synchronise; f's device work need not have finished.
int64_t syncs_of(const std::function<void()>& f) {
  SyncCounter counter;
  f();
  return counter.count;
}
constexpr bool kCanCount = true;
#else
// Nothing counts without LibTorch's CUDA library: the test skips before it would call this.
int64_t syncs_of(const std::function<void()>&) { return -1; }
constexpr bool kCanCount = false;
#endif

struct Expected {
  std::string name;
  std::function<MoEOutput(const torch::Tensor&)> forward;
  torch::nn::Module* module;
  int64_t forward_syncs, backward_syncs;
  c10::ScalarType dtype = at::kFloat;
};

TEST(DeviceSyncs, OnlyTheDocumentedReads) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = moe::testing::device_under_test();
  if (!device.is_cuda())
    GTEST_SKIP() << "counts CUDA's synchronisations; on the CPU "
                    "HostReads.* (tests/layers/test_host_reads.cpp) count";
  if (!kCanCount)
    GTEST_SKIP() << "built against a LibTorch without CUDA: CUDA's sync counter is not linked";
  torch::manual_seed(3);
  const auto skip = NonFinitePolicy::kSkip;
  SparseMoE top2(SparseMoEOptions(kD, kE).hidden_size(kH).non_finite(skip).balance_coef(0.01));
  SparseMoE capped(SparseMoEOptions(kD, kE).hidden_size(kH).non_finite(skip).capacity_factor(1.0));
  SparseMoE noisy(SparseMoEOptions(kD, kE)
                      .hidden_size(kH)
                      .router(RouterKind::kNoisyTopK)
                      .non_finite(skip)
                      .importance_coef(0.1)
                      .load_coef(0.1));
  HyperRouterMoE hyper(HyperRouterMoEOptions(kD, kE).hyper_hidden(16).non_finite(skip));
  TopAnyMoE top_any(TopAnyMoEOptions(kD, kE).initial_experts(2).non_finite(skip));
  HierarchicalMoE hier(HierarchicalMoEOptions(kD, 2, 2).hidden_size(kH).non_finite(skip));
  // bf16 with widths that are multiples of 8: where the grouped GEMMs run (MOE_GROUPED_MM=1 and a
  // LibTorch with aten::_grouped_mm), nothing is read at all.
  SparseMoE top2_bf16(SparseMoEOptions(kD, kE).hidden_size(kH).non_finite(skip));
  top2_bf16->to(at::kBFloat16);
  const int64_t bounds_reads = engine::portable::grouped_requested() ? 0 : 1;
  // One read of the segment bounds per engine call, in each direction; the hierarchical router
  // adds its group bounds (forward, and the backward of its secondary gates).
  std::vector<Expected> layers{
      {"softmax top-2", [&](auto& x) { return top2(x); }, top2.ptr().get(), 1, 1},
      {"top-2 with capacity", [&](auto& x) { return capped(x); }, capped.ptr().get(), 1, 1},
      {"noisy top-2", [&](auto& x) { return noisy(x); }, noisy.ptr().get(), 1, 1},
      {"HyperRouter", [&](auto& x) { return hyper(x); }, hyper.ptr().get(), 1, 1},
      {"top-any", [&](auto& x) { return top_any(x); }, top_any.ptr().get(), 1, 1},
      {"hierarchical 2x2", [&](auto& x) { return hier(x); }, hier.ptr().get(), 2, 2},
      {"softmax top-2, bf16", [&](auto& x) { return top2_bf16(x); }, top2_bf16.ptr().get(),
       bounds_reads, bounds_reads, at::kBFloat16},
  };
  for (auto& layer : layers) {
    SCOPED_TRACE(layer.name);
    layer.module->to(device);
    layer.module->train(true);
    auto x = torch::randn({kT, kD}, at::TensorOptions(device).dtype(layer.dtype)).requires_grad_();
    MoEOutput out;
    EXPECT_EQ(syncs_of([&] { out = layer.forward(x); }), layer.forward_syncs) << "forward";
    EXPECT_EQ(syncs_of([&] { (out.output.pow(2).sum() + out.aux_loss).backward(); }),
              layer.backward_syncs)
        << "backward";
    layer.module->train(false);
    torch::NoGradGuard no_grad;
    EXPECT_EQ(syncs_of([&] { layer.forward(x); }), layer.forward_syncs) << "evaluation";
  }
}

// With the grouped GEMMs asked for, an aligned bf16 problem on the device takes them, so that the
// table's run with MOE_GROUPED_MM=1 (tools/gpu/device_check.sh) checks that path.
TEST(DeviceSyncs, GroupedGemmsTakeAlignedBf16) {
  MOE_SKIP_WITHOUT_TEST_DEVICE();
  const auto device = moe::testing::device_under_test();
  if (device.is_cpu()) GTEST_SKIP() << "the CPU has its own path";
  if (!engine::portable::grouped_requested())
    GTEST_SKIP() << "MOE_GROUPED_MM=1 with PyTorch 2.8+ asks for the grouped GEMMs";
  const auto o = at::TensorOptions(device).dtype(at::kBFloat16);
  engine::ExpertProblem p;
  p.x = at::zeros({4, 16}, o);
  p.w1 = at::zeros({2, 16, 24}, o);
  p.w2 = at::zeros({2, 24, 16}, o);
  p.pair_slot = at::arange(8, at::TensorOptions(device).dtype(at::kLong));
  EXPECT_TRUE(engine::portable::grouped_applies(p));
  p.w1 = at::zeros({2, 16, 20}, o);  // 20 bf16 = 40 bytes: not a multiple of 16
  EXPECT_FALSE(engine::portable::grouped_applies(p));
}

}  // namespace
