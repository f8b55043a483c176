// ExpertBank: stacked expert parameters and their grouped evaluation (include/moe/experts.h).
#include <ATen/ATen.h>

#include <cmath>
#include <ostream>

#include "moe/experts.h"
#include "moe/functional.h"

namespace moe {

ExpertBankImpl::ExpertBankImpl(ExpertBankOptions options_) : options(std::move(options_)) {
  TORCH_CHECK_VALUE(options.num_experts() >= 1, "ExpertBank: num_experts must be >= 1, got ",
                    options.num_experts());
  TORCH_CHECK_VALUE(options.d_model() >= 1, "ExpertBank: d_model must be >= 1, got ",
                    options.d_model());
  TORCH_CHECK_VALUE(options.hidden_size() >= 1, "ExpertBank: hidden_size must be >= 1, got ",
                    options.hidden_size());
  TORCH_CHECK_VALUE(std::isfinite(options.init_std()) && options.init_std() >= 0,
                    "ExpertBank: init_std must be finite and >= 0, got ", options.init_std());
  reset();
}

void ExpertBankImpl::reset() {
  const int64_t E = options.num_experts(), d = options.d_model(), h = options.hidden_size();
  w1 = register_parameter("w1", torch::empty({E, d, h}));
  w2 = register_parameter("w2", torch::empty({E, h, d}));
  w3 = is_gated(options.activation()) ? register_parameter("w3", torch::empty({E, d, h}))
                                      : torch::Tensor();
  if (options.bias()) {
    b1 = register_parameter("b1", torch::empty({E, h}));
    b2 = register_parameter("b2", torch::empty({E, d}));
  } else {
    b1 = b2 = torch::Tensor();
  }
  reset_parameters();
}

void ExpertBankImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double d = static_cast<double>(options.d_model());
  const double h = static_cast<double>(options.hidden_size());
  // (fan_in, fan_out) of w1/w3 is (d, h); of w2 it is (h, d).
  auto init = [&](torch::Tensor& w, double fan_in, double fan_out) {
    switch (options.init()) {
      case ExpertInit::kGlorotUniform: {
        const double b = std::sqrt(6.0 / (fan_in + fan_out));
        w.uniform_(-b, b);
        break;
      }
      case ExpertInit::kLinearDefault: {
        const double b = 1.0 / std::sqrt(fan_in);
        w.uniform_(-b, b);
        break;
      }
      case ExpertInit::kNormal:
        w.normal_(0.0, options.init_std());
        break;
    }
  };
  init(w1, d, h);
  init(w2, h, d);
  if (w3.defined()) init(w3, d, h);
  auto init_bias = [&](torch::Tensor& b, double fan_in) {
    if (!b.defined()) return;
    if (options.init() == ExpertInit::kLinearDefault) {
      const double bound = 1.0 / std::sqrt(fan_in);
      b.uniform_(-bound, bound);
    } else {
      b.zero_();
    }
  };
  init_bias(b1, d);
  init_bias(b2, h);
}

void ExpertBankImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::ExpertBank(num_experts=" << options.num_experts()
         << ", d_model=" << options.d_model() << ", hidden_size=" << options.hidden_size()
         << ", activation=" << to_string(options.activation()) << ", bias=" << options.bias()
         << ", init=" << to_string(options.init())
         << (options.recompute_hidden() ? ", recompute_hidden" : "") << ")";
}

torch::Tensor ExpertBankImpl::forward(const torch::Tensor& x, const RoutingPlan& plan,
                                      const torch::Tensor& pair_weight) {
  return functional::expert_mlp(x, plan, pair_weight, {w1, w2, w3, b1, b2}, options.activation(),
                                options.recompute_hidden());
}

}  // namespace moe
