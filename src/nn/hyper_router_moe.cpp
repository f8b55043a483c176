// moe::nn::HyperRouterMoE: a named constructor of RoutedMoE with a k schedule
// (include/moe/nn/hyper_router_moe.h).
#include "moe/nn/hyper_router_moe.h"

#include <ATen/ATen.h>

#include <ostream>

#include "moe/nn/buffer_counter.h"

namespace moe::nn {
namespace {

constexpr const char* kWho = "HyperRouterMoE";

RoutedMoEOptions routed_options(const HyperRouterMoEOptions& o) {
  TORCH_CHECK_VALUE(o.num_experts() >= 1, kWho, ": num_experts must be >= 1, got ",
                    o.num_experts());
  TORCH_CHECK_VALUE(o.top_k() >= 1 && o.top_k() <= o.num_experts(), kWho,
                    ": top_k must be in [1, num_experts=", o.num_experts(), "], got ", o.top_k());
  if (const auto& s = o.k_schedule()) {
    TORCH_CHECK_VALUE(s->k_max() <= o.num_experts(), kWho,
                      ": the k schedule reaches k_max=", s->k_max(),
                      " but there are only num_experts=", o.num_experts());
  }
  RouterFactory router;
  if (o.router() == HyperRouterKind::kHyper) {
    const auto ho = o.hyper_router_options();
    router = [ho] { return HyperRouter(ho).ptr(); };
  } else {
    const auto ro = o.random_router_options();
    router = [ro] { return TopKRouter(ro).ptr(); };
  }
  return RoutedMoEOptions(o.d_model(), std::move(router), o.expert_options()).name(kWho);
}

}  // namespace

// The k of each forward (SMoE-Dropout's growing k, docs/algorithms.md §3.1): a training forward
// takes k from the schedule and counts itself in the buffer "step"; an eval forward uses the
// inference k, else the k of the latest training forward, and restores the training k afterwards.
class TopKScheduleComponent : public LayerComponent {
 public:
  TopKScheduleComponent(RoutedMoEImpl& layer, c10::optional<TopKSchedule> schedule)
      : schedule_(std::move(schedule)) {
    // The schedule's position is a buffer, so that checkpoints resume the k schedule.
    step.attach(layer.register_buffer("step", torch::zeros({1}, torch::kLong)));
    step.set(0);
  }

  void before_routing(RoutedMoEImpl& layer) override {
    int64_t k = layer.top_k();
    saved_k_ = k;
    if (layer.is_training()) {
      const int64_t t = step.get();
      if (schedule_) k = schedule_->at(t);
      step.set(t + 1);
    } else if (inference_k) {
      k = *inference_k;
    } else if (schedule_) {
      const int64_t t = step.get();
      k = schedule_->at(t > 0 ? t - 1 : 0);  // the k of the latest training forward
    }
    layer.set_top_k(k);
  }
  // A training forward keeps the scheduled k (it is the layer's current k); eval restores it.
  void after_routing(RoutedMoEImpl& layer, const torch::Tensor&, const RoutingResult&) override {
    if (!layer.is_training()) layer.set_top_k(saved_k_);
  }
  void routing_failed(RoutedMoEImpl& layer) override { layer.set_top_k(saved_k_); }

  BufferCounter step;  // buffer "step" [1] int64
  c10::optional<int64_t> inference_k;

 private:
  c10::optional<TopKSchedule> schedule_;
  int64_t saved_k_ = 0;
};

HyperRouterOptions HyperRouterMoEOptions::hyper_router_options() const {
  return HyperRouterOptions(d_model(), num_experts())
      .top_k(top_k())
      .hyper_hidden(hyper_hidden())
      .embedding_dim(embedding_dim())
      .init_std(router_init_std())
      .balance_coef(balance_coef())
      .z_loss_coef(z_loss_coef())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name(kWho);
}

RouterOptions HyperRouterMoEOptions::random_router_options() const {
  // kFrozenRandom: frozen, with bias, softmax over the k selected logits. kTrainable: the same
  // router trained; softmax over all E logits renormalised over the k kept is that same softmax
  // over the k selected logits, and balance_coef() is passed, so no default balance loss is added.
  const bool frozen = router() == HyperRouterKind::kFrozenRandom;
  return RouterOptions(d_model(), num_experts())
      .kind(frozen ? RouterKind::kFrozenRandom : RouterKind::kSoftmaxTopK)
      .bias(true)
      .normalize_top_k(true)
      .top_k(top_k())
      .router_init_std(router_init_std())
      .balance_coef(balance_coef())
      .z_loss_coef(z_loss_coef())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name(kWho);
}

HyperRouterMoEImpl::HyperRouterMoEImpl(HyperRouterMoEOptions options)
    : RoutedMoEImpl(routed_options(options)), layer_options_(std::move(options)) {
  const auto router_module = named_children()["router"];
  if (layer_options_.router() == HyperRouterKind::kHyper) {
    hyper_router = HyperRouter(std::dynamic_pointer_cast<HyperRouterImpl>(router_module));
  } else {
    random_router = TopKRouter(std::dynamic_pointer_cast<TopKRouterImpl>(router_module));
  }
  schedule_ = std::make_shared<TopKScheduleComponent>(*this, layer_options_.k_schedule());
  add_component(schedule_);
}

std::shared_ptr<RoutedMoEImpl> HyperRouterMoEImpl::make_copy() const {
  return std::make_shared<HyperRouterMoEImpl>(layer_options_);
}

void HyperRouterMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& o = layer_options_;
  stream << "moe::nn::HyperRouterMoE(router="
         << (o.router() == HyperRouterKind::kHyper          ? "hyper"
             : o.router() == HyperRouterKind::kFrozenRandom ? "frozen_random"
                                                            : "trainable")
         << ", d_model=" << o.d_model() << ", num_experts=" << o.num_experts()
         << ", hidden_size=" << o.hidden_size() << ", top_k=" << top_k();
  if (o.k_schedule()) {
    const auto& s = *o.k_schedule();
    stream << ", k_schedule=" << to_string(s.mode()) << "(" << s.k_min() << "->" << s.k_max()
           << " over " << s.total_steps() << ")";
  }
  stream << ")";
}

void HyperRouterMoEImpl::set_inference_top_k(c10::optional<int64_t> k) {
  if (k) {
    TORCH_CHECK_VALUE(*k >= 1 && *k <= layer_options_.num_experts(), kWho,
                      ": inference top_k must be in [1, num_experts=", layer_options_.num_experts(),
                      "], got ", *k);
  }
  schedule_->inference_k = k;
}

int64_t HyperRouterMoEImpl::step() const { return schedule_->step.get(); }

void HyperRouterMoEImpl::set_step(int64_t step) {
  TORCH_CHECK_VALUE(step >= 0, kWho, ": step must be >= 0, got ", step);
  schedule_->step.set(step);
}

}  // namespace moe::nn
