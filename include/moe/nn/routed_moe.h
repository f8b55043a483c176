// moe::nn::RoutedMoE: the one place where routing meets the experts (docs/design.md §1).
//
//   x [..., d] → tokens [T, d] → router (any RouterInterface) → RoutingResult
//     → RoutingPlan (expert-major pairs) → ExpertBank (the engine) → Σ gate · expert(x) → [..., d]
//
// The router is a plug-in: the layer registers the router's modules under the names the router
// gives (moe/router.h), so every router keeps its own parameter names. SparseMoE, HyperRouterMoE,
// HierarchicalMoE and TopAnyMoE are named constructors of this layer (moe/nn/*.h). Behaviour that
// acts around routing without being routing, such as a k schedule or DynMoE's changing expert set,
// is a LayerComponent that the named constructor adds.
//
// Parameters: the router's (e.g. router.weight), experts.w1 [E, d, h], experts.w2 [E, h, d],
// experts.w3 [E, d, h] (gated units), experts.b1 [E, h], experts.b2 [E, d] (optional), and the
// buffers of components.
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moe/distributed.h"
#include "moe/experts.h"
#include "moe/router.h"
#include "moe/stats.h"

namespace torch::optim {
class Optimizer;
}

namespace moe::nn {

class RoutedMoEImpl;

/// Makes the router of a routed layer (clone() calls it again for the copy).
using RouterFactory = std::function<std::shared_ptr<RouterInterface>()>;

/// Example:
///   RoutedMoE layer(RoutedMoEOptions(/*d_model=*/512,
///       [] { return TopKRouter(RouterOptions(512, 16).kind(RouterKind::kNoisyTopK)).ptr(); },
///       ExpertBankOptions(16, 512, 2048)));
/// (SparseMoE and the other named layers fill these options for you.)
struct RoutedMoEOptions {
  RoutedMoEOptions(int64_t d_model, RouterFactory router, ExpertBankOptions experts)
      : d_model_(d_model), router_(std::move(router)), experts_(std::move(experts)) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(RouterFactory, router);
  TORCH_ARG(ExpertBankOptions, experts);
  /// The layer named in error messages.
  TORCH_ARG(std::string, name) = "RoutedMoE";
};

/// Acts around routing in a routed layer: before routing (e.g. set k from a schedule), after
/// routing (e.g. record which experts fired) and on the statistics. Components are made by a
/// named constructor, and may register buffers on the layer.
class LayerComponent {
 public:
  virtual ~LayerComponent() = default;
  virtual void before_routing(RoutedMoEImpl& layer) {}
  virtual void after_routing(RoutedMoEImpl& layer, const torch::Tensor& tokens,
                             const RoutingResult& routing) {}
  /// Called instead of after_routing when the router threw (the exception is rethrown).
  virtual void routing_failed(RoutedMoEImpl& layer) {}
  /// Called after the expert pass.
  virtual void after_forward(RoutedMoEImpl& layer) {}
  /// Called by distribute_experts() before the layer keeps only its experts; a component that
  /// cannot work with experts spread over processes raises an error naming itself.
  virtual void before_distributing(RoutedMoEImpl& layer, dist::ProcessGroup& group) {}
};

class RoutedMoEImpl : public torch::nn::Module {
 public:
  /// Makes the router and the expert bank and registers them.
  explicit RoutedMoEImpl(RoutedMoEOptions options);
  /// New initial values for the router and the experts.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: [..., d_model] (any leading dims; float32, float64 or bfloat16 matching the experts).
  MoEOutput forward(const torch::Tensor& x);

  /// The router, through the plug-in interface.
  RouterInterface& router_interface() const { return *router_; }
  /// The router as its concrete module type; a c10::TypeError names the kind otherwise.
  template <typename RouterImpl>
  RouterImpl& router_as() const {
    auto* r = dynamic_cast<RouterImpl*>(router_.get());
    if (r == nullptr) throw_router_type_error();
    return *r;
  }
  /// Expert parallelism (docs/distributed.md): from now on this rank keeps only its experts,
  /// [r·E/W, (r+1)·E/W) of the E global experts, and every forward routes its tokens over all E
  /// (the router is replicated: its gradients must be averaged over the ranks, see
  /// moe/nn/data_parallel.h), sends them to their experts' ranks and back, and computes the
  /// auxiliary losses and statistics over the global batch. A collective: every rank of `group`
  /// calls it on the same layer, built alike (same seed), and the ranks first compare the layers
  /// (shapes, expert count, dtype, router): a difference is an error naming it, on every rank.
  /// E % W must be 0. `optimizer`: one that already holds the parameters (a resumed run), whose
  /// state for the experts is cut the same way.
  void distribute_experts(std::shared_ptr<dist::ProcessGroup> group,
                          torch::optim::Optimizer* optimizer = nullptr);
  /// The inverse, a collective too: every rank gets all E experts back (and the optimizer's state
  /// for them), e.g. to save a checkpoint that any world size can load.
  void gather_experts(torch::optim::Optimizer* optimizer = nullptr);
  /// The group the experts are spread over, or null.
  const std::shared_ptr<dist::ProcessGroup>& expert_group() const { return expert_group_; }
  /// E: the experts the router chooses from (all ranks' experts together).
  int64_t global_experts() const { return router_->num_experts(); }
  /// Changes k (1 <= k <= E) of a top-k router from now on.
  void set_top_k(int64_t k);
  int64_t top_k() const { return router_->top_k(); }

  /// Converts the experts (and the component buffers that follow them) to `dtype`; the router
  /// stays float32 (float64 when dtype is float64), as routing in bf16 flips expert choices
  /// (docs/reliability.md §2). Children of user modules get this too.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  /// Training or eval mode, for the router too (a router may register only some of its modules
  /// on the layer, e.g. the two gates of the hierarchical router).
  void train(bool on = true) override;
  /// A deep copy: the same options, every parameter and buffer copied (to `device` if given).
  std::shared_ptr<torch::nn::Module> clone(
      const c10::optional<torch::Device>& device = c10::nullopt) const override;

  RoutedMoEOptions options;
  ExpertBank experts = nullptr;

 protected:
  /// A layer with the same options, before its state is copied (clone()); named layers return
  /// their own type.
  virtual std::shared_ptr<RoutedMoEImpl> make_copy() const;
  void add_component(std::shared_ptr<LayerComponent> component);
  const std::vector<std::shared_ptr<LayerComponent>>& components() const { return components_; }

 private:
  [[noreturn]] void throw_router_type_error() const;
  /// The router on `tokens`, with the components around it.
  RoutingResult route(const torch::Tensor& tokens, const BatchShards& batch);
  MoEOutput forward_expert_parallel(const torch::Tensor& x, const torch::Tensor& tokens);
  /// What every rank must agree on before the experts are spread, as "key=value" words.
  std::string signature() const;
  void keep_local_experts(std::shared_ptr<dist::ProcessGroup> group,
                          torch::optim::Optimizer* optimizer);
  std::shared_ptr<dist::ProcessGroup> expert_group_;
  std::shared_ptr<RouterInterface> router_;
  std::vector<std::shared_ptr<torch::nn::Module>> router_modules_;
  std::vector<std::shared_ptr<LayerComponent>> components_;
};
TORCH_MODULE(RoutedMoE);

}  // namespace moe::nn
