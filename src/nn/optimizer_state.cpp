// Per-parameter optimizer state access (src/nn/optimizer_state.h).
#include "nn/optimizer_state.h"

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>

namespace moe::detail {
namespace {

// The state map is keyed by the parameter's TensorImpl: as a printed address in LibTorch 1.x, as
// the pointer itself in later releases.
template <typename Map>
typename Map::key_type key_of(const Map&, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  Key key{};
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream s;
    s << static_cast<const void*>(p.unsafeGetTensorImpl());
    key = s.str();
  } else {
    key = p.unsafeGetTensorImpl();
  }
  return key;
}

template <typename Map>
typename Map::mapped_type::element_type* find_state(Map& map, const torch::Tensor& p) {
  auto it = map.find(key_of(map, p));
  return it == map.end() ? nullptr : it->second.get();
}

}  // namespace

torch::optim::OptimizerParamState* find_param_state(torch::optim::Optimizer& optimizer,
                                                    const torch::Tensor& p) {
  return find_state(optimizer.state(), p);
}

void set_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p,
                     std::unique_ptr<torch::optim::OptimizerParamState> state) {
  auto& map = optimizer.state();
  map[key_of(map, p)] = std::move(state);
}

void erase_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p) {
  auto& map = optimizer.state();
  map.erase(key_of(map, p));
}

void transform_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p,
                           const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                           const char* who) {
  auto* state = find_state(optimizer.state(), p);
  if (state == nullptr) return;
  auto apply = [&](const torch::Tensor& t) { return t.defined() ? fn(t) : t; };
  if (auto* s = dynamic_cast<torch::optim::AdamParamState*>(state)) {
    s->exp_avg(apply(s->exp_avg()));
    s->exp_avg_sq(apply(s->exp_avg_sq()));
    s->max_exp_avg_sq(apply(s->max_exp_avg_sq()));
  } else if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(state)) {
    s->exp_avg(apply(s->exp_avg()));
    s->exp_avg_sq(apply(s->exp_avg_sq()));
    s->max_exp_avg_sq(apply(s->max_exp_avg_sq()));
  } else if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(state)) {
    s->momentum_buffer(apply(s->momentum_buffer()));
  } else if (auto* s = dynamic_cast<torch::optim::RMSpropParamState*>(state)) {
    s->square_avg(apply(s->square_avg()));
    s->momentum_buffer(apply(s->momentum_buffer()));
    s->grad_avg(apply(s->grad_avg()));
  } else if (auto* s = dynamic_cast<torch::optim::AdagradParamState*>(state)) {
    s->sum(apply(s->sum()));
  } else {
    TORCH_CHECK(false, who, ": cannot carry the optimizer state of type ", typeid(*state).name(),
                " across a resize (supported: Adam, AdamW, SGD, RMSprop, Adagrad)");
  }
}

}  // namespace moe::detail
