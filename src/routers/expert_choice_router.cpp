// ExpertChoiceRouter (include/moe/routers/expert_choice_router.h, docs/algorithms.md §5.4).
#include "moe/routers/expert_choice_router.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <ostream>

#include "moe/gating.h"
#include "moe/losses.h"
#include "routers/non_finite.h"
#include "routers/top_k_routing.h"

namespace moe {

ExpertChoiceRouterImpl::ExpertChoiceRouterImpl(ExpertChoiceRouterOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  const auto& who = o.name();
  TORCH_CHECK_VALUE(o.d_model() >= 1, who, ": d_model must be >= 1, got ", o.d_model());
  TORCH_CHECK_VALUE(o.num_experts() >= 1, who, ": num_experts must be >= 1, got ", o.num_experts());
  TORCH_CHECK_VALUE(std::isfinite(o.capacity_factor()) && o.capacity_factor() > 0, who,
                    ": capacity_factor must be finite and > 0, got ", o.capacity_factor());
  TORCH_CHECK_VALUE(std::isfinite(o.init_std()) && o.init_std() >= 0, who,
                    ": init_std must be finite and >= 0, got ", o.init_std());
  TORCH_CHECK_VALUE(std::isfinite(o.z_loss_coef()) && o.z_loss_coef() >= 0, who,
                    ": z_loss_coef must be finite and >= 0, got ", o.z_loss_coef());
  reset();
}

void ExpertChoiceRouterImpl::reset() {
  const int64_t E = options.num_experts(), d = options.d_model();
  weight = register_parameter("weight", torch::empty({E, d}));
  bias = options.bias() ? register_parameter("bias", torch::empty({E})) : torch::Tensor();
  reset_parameters();
}

void ExpertChoiceRouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, options.init_std());
  if (bias.defined()) bias.zero_();
}

void ExpertChoiceRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::ExpertChoiceRouter(d_model=" << options.d_model()
         << ", num_experts=" << options.num_experts()
         << ", capacity_factor=" << options.capacity_factor() << ")";
}

int64_t ExpertChoiceRouterImpl::capacity(int64_t num_tokens) const {
  if (num_tokens == 0) return 0;
  const double c = std::ceil(static_cast<double>(num_tokens) * options.capacity_factor() /
                             static_cast<double>(options.num_experts()));
  return std::min<int64_t>(num_tokens, std::max<int64_t>(1, static_cast<int64_t>(c)));
}

RoutingResult ExpertChoiceRouterImpl::route(const torch::Tensor& x, const BatchShards& batch) {
  const auto& who = options.name();
  detail::check_router_input(x, options.d_model(), who);
  // Each expert chooses among the tokens of the global batch: C follows its size, and every rank
  // ranks the scores of all shards (the same choice on every rank) and keeps its own rows.
  const int64_t T = x.size(0), E = options.num_experts(), C = capacity(batch.total_rows());
  const auto rd = router_dtype(x.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == rd, who, ": router parameters are ",
                   weight.scalar_type(), " but inputs of dtype ", x.scalar_type(), " need ", rd);
  auto xr = x.to(rd);
  auto logits = at::linear(xr, weight, bias);
  const auto finite =
      detail::check_finite_tokens(logits, options.non_finite(), who, "router logits");
  const auto& valid = finite.valid;
  if (valid.defined()) logits = at::linear(detail::zero_invalid_rows(xr, valid), weight, bias);
  const auto scores = at::softmax(logits, /*dim=*/1);  // [T, E], over the experts

  // Each expert takes its C best tokens: a row-wise top-C of Sᵀ, ties to the lowest token index.
  // Skipped tokens rank below every valid one (-1 < any probability) and are dropped after.
  auto rank = scores.detach();
  if (valid.defined()) rank = rank.masked_fill(~valid.unsqueeze(1), -1.0);
  const auto all_rank = batch.all_rows(rank);
  auto taken = at::zeros({batch.total_rows(), E}, x.options().dtype(at::kBool));
  if (C > 0) {
    const auto picked = std::get<0>(topk_lowest_index(all_rank.t().contiguous(), C));  // [E, C]
    taken.t().scatter_(1, picked, true);
  }
  if (!batch.whole()) taken = taken.narrow(0, batch.row_offset(), T);
  if (valid.defined()) taken &= valid.unsqueeze(1);

  RoutingResult out;
  const auto experts = at::arange(E, x.options().dtype(at::kLong)).unsqueeze(0).expand({T, E});
  out.expert_index = at::where(taken, experts, at::full({}, -1, experts.options()));
  out.gate = scores * taken.to(scores.scalar_type());  // S[t, e], not renormalised
  out.importance = batch.sum(out.gate.sum(0));
  out.load = batch.sum(taken.sum(0).to(scores.scalar_type()));
  out.assigned = taken.sum();
  out.dropped = at::zeros({}, out.assigned.options());
  out.skipped_tokens = finite.skipped;
  out.unrouted = taken.any(1).logical_not();
  if (valid.defined()) out.unrouted &= valid;

  // Every parameter stays in the graph (a zero-token batch still gets zero, not undefined, grads).
  auto aux = logits.sum() * 0.0;
  if ((is_training() || options.aux_loss_in_eval()) && options.z_loss_coef() > 0) {
    const auto kept = valid.defined() ? logits.index({valid}) : logits;
    const auto z =
        batch.whole()
            ? router_z_loss(kept)
            : batch.sum(at::logsumexp(kept, -1).pow(2).sum()) /
                  batch.sum(at::full({}, double(kept.size(0)), kept.options())).clamp_min(1);
    aux = aux + options.z_loss_coef() * z;
    out.loss_terms.emplace_back("z", z.detach());
  }
  out.aux_loss = aux;
  return out;
}

}  // namespace moe
