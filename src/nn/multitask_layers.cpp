// The dense parts of the multi-task models: MLP (towers, bottoms, gate hidden layers) and TaskGate
// (include/moe/nn/multitask.h).
#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <ostream>
#include <string>

#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/matmul.h"
#include "moe/nn/multitask.h"
#include "nn/multitask_checks.h"

namespace moe::nn {

// torch::nn::Linear (same parameters, names and initialisation) whose product accumulates in
// float32 for bf16 on every CPU (moe/matmul.h).
class Bf16SafeLinearImpl : public torch::nn::Cloneable<Bf16SafeLinearImpl> {
 public:
  Bf16SafeLinearImpl(int64_t in, int64_t out) : options(in, out) { reset(); }
  void reset() override {
    const torch::nn::Linear init(options);  // torch's initialisation, draw for draw
    weight = register_parameter("weight", init->weight.detach());
    bias = register_parameter("bias", init->bias.detach());
  }
  torch::Tensor forward(const torch::Tensor& x) { return ops::linear(x, weight, bias); }
  void pretty_print(std::ostream& os) const override {
    os << "Linear(in_features=" << options.in_features()
       << ", out_features=" << options.out_features() << ")";
  }
  torch::nn::LinearOptions options;
  torch::Tensor weight, bias;
};

// --- MLP -----------------------------------------------------------------------------------------

MLPImpl::MLPImpl(int64_t in, std::vector<int64_t> hidden, int64_t out)
    : in_(in), out_(out), hidden_(std::move(hidden)) {
  reset();
}

void MLPImpl::reset() {
  layers_.clear();
  int64_t in = in_;
  auto add = [&](int64_t out) {
    layers_.push_back(std::make_shared<Bf16SafeLinearImpl>(in, out));
    register_module(std::to_string(layers_.size() - 1), layers_.back());
    in = out;
  };
  for (auto h : hidden_) add(h);
  if (out_ > 0) add(out_);
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  auto h = x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    h = layers_[i]->forward(h);
    if (i < hidden_.size()) h = at::relu(h);  // not after the output layer
  }
  return h;
}

std::map<std::string, std::string> MLPImpl::legacy_names() const {
  std::map<std::string, std::string> names;
  for (size_t i = 1; i < layers_.size(); ++i) {
    for (const char* p : {".weight", ".bias"})
      names[std::to_string(2 * i) + p] = std::to_string(i) + p;
  }
  return names;
}

void MLPImpl::pretty_print(std::ostream& os) const {
  os << "moe::nn::MLP(in=" << in_ << ", hidden=" << c10::IntArrayRef(hidden_) << ", out=" << out_
     << ")";
}

// --- TaskGate ------------------------------------------------------------------------------------

TaskGateImpl::TaskGateImpl(int64_t in_, int64_t num_experts_, TaskGateOptions options_)
    : options(std::move(options_)), num_experts(num_experts_), in(in_) {
  TORCH_CHECK_VALUE(num_experts >= 1, "TaskGate: needs >= 1 expert, got ", num_experts);
  detail::check_sizes(options.hidden(), "TaskGate", "gate hidden");
  TORCH_CHECK_VALUE(options.top_k() >= 0 && options.top_k() <= num_experts,
                    "TaskGate: top_k must be in [0 (dense), ", num_experts, "], got ",
                    options.top_k());
  TORCH_CHECK_VALUE(std::isfinite(options.balance_coef()) && options.balance_coef() >= 0,
                    "TaskGate: balance_coef must be finite and >= 0, got ", options.balance_coef());
  reset();
}

void TaskGateImpl::reset() {
  const int64_t gate_in = options.hidden().empty() ? in : options.hidden().back();
  hidden = register_module("hidden", MLP(in, options.hidden(), 0));
  const double bound = 1.0 / std::sqrt(static_cast<double>(gate_in));
  weight =
      register_parameter("weight", torch::empty({num_experts, gate_in}).uniform_(-bound, bound));
  if (options.bias() || options.bias_init()) {
    bias = register_parameter("bias", options.bias_init()
                                          ? torch::full({num_experts}, *options.bias_init())
                                          : torch::empty({num_experts}).uniform_(-bound, bound));
  } else {
    bias = torch::Tensor();
  }
}

torch::Tensor TaskGateImpl::logits(const torch::Tensor& x) {
  const auto h = options.hidden().empty() ? x : hidden->forward(x);
  return ops::linear(h, weight, bias);
}

torch::Tensor TaskGateImpl::forward(const torch::Tensor& x, torch::Tensor* aux) {
  const auto logits_x = logits(x);
  if (options.top_k() == 0) return at::softmax(logits_x, 1);
  // Top-k gating runs in float32 for bf16 models (as the routers do); the gate returns in the
  // model's dtype.
  const auto z = logits_x.scalar_type() == at::kBFloat16 ? logits_x.to(at::kFloat) : logits_x;
  const TopKGate g = softmax_top_k_gating(z, options.top_k(), /*normalize=*/true);
  if (aux != nullptr && options.balance_coef() > 0 && is_training()) {
    *aux = *aux + options.balance_coef() * balance_loss(at::softmax(z, 1), g.expert_index);
  }
  return at::zeros_like(z).scatter(1, g.expert_index, g.gate).to(logits_x.scalar_type());
}

}  // namespace moe::nn
