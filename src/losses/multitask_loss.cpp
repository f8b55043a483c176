// Multi-task loss and metrics (include/moe/multitask_loss.h).
#include "moe/multitask_loss.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace moe {

MultiTaskLoss::MultiTaskLoss(MultiTaskLossOptions options) : options_(std::move(options)) {
  const auto K = options_.types.size();
  TORCH_CHECK_VALUE(K >= 1, "MultiTaskLoss: needs at least one task type");
  if (options_.initial_weights.empty()) options_.initial_weights.assign(K, 1.0);
  if (options_.decay.empty()) options_.decay.assign(K, 1.0);
  TORCH_CHECK_VALUE(options_.initial_weights.size() == K && options_.decay.size() == K,
                    "MultiTaskLoss: ", K, " task types but ", options_.initial_weights.size(),
                    " initial weights and ", options_.decay.size(), " decay factors");
  for (size_t k = 0; k < K; ++k) {
    TORCH_CHECK_VALUE(
        std::isfinite(options_.initial_weights[k]) && options_.initial_weights[k] >= 0,
        "MultiTaskLoss: initial weight of task ", k, " must be finite and >= 0, got ",
        options_.initial_weights[k]);
    TORCH_CHECK_VALUE(std::isfinite(options_.decay[k]) && options_.decay[k] > 0,
                      "MultiTaskLoss: decay of task ", k, " must be finite and > 0, got ",
                      options_.decay[k]);
  }
}

double MultiTaskLoss::weight(int64_t task, int64_t t) const {
  const auto k = static_cast<size_t>(task);
  return options_.initial_weights.at(k) * std::pow(options_.decay.at(k), static_cast<double>(t));
}

torch::Tensor MultiTaskLoss::operator()(const std::vector<torch::Tensor>& outputs,
                                        const torch::Tensor& targets, const torch::Tensor& mask,
                                        int64_t t, std::vector<torch::Tensor>* per_task) const {
  const int64_t K = num_tasks();
  TORCH_CHECK_VALUE(static_cast<int64_t>(outputs.size()) == K, "MultiTaskLoss: ", K, " tasks but ",
                    outputs.size(), " outputs");
  TORCH_CHECK(targets.dim() == 2 && targets.size(1) == K, "MultiTaskLoss: targets must be [T, ", K,
              "], got ", targets.sizes());
  const int64_t T = targets.size(0);
  TORCH_CHECK(!mask.defined() || mask.sizes() == targets.sizes(),
              "MultiTaskLoss: mask must have the shape of targets ", targets.sizes(), ", got ",
              mask.defined() ? mask.sizes() : at::IntArrayRef{});
  if (per_task) per_task->clear();
  torch::Tensor total;
  for (int64_t k = 0; k < K; ++k) {
    const auto y = outputs[static_cast<size_t>(k)].reshape({-1});
    TORCH_CHECK(y.size(0) == T, "MultiTaskLoss: output of task ", k, " has ", y.size(0),
                " rows, targets have ", T);
    const auto d = mask.defined() ? mask.select(1, k).to(y.scalar_type()) : at::ones_like(y);
    // Labels outside a task's sample space are often stored as NaN: replace them before the loss so
    // that neither the value nor the gradient sees them.
    const auto target =
        at::where(d > 0, targets.select(1, k).to(y.scalar_type()), at::zeros_like(y.detach()));
    torch::Tensor l;
    if (options_.types[static_cast<size_t>(k)] == TaskType::kRegression) {
      l = (y - target).pow(2);
    } else {
      l = at::binary_cross_entropy_with_logits(y, target, {}, {}, at::Reduction::None);
    }
    const auto lk = (l * d).sum() / d.sum().clamp_min(1.0);
    if (per_task) per_task->push_back(lk);
    const auto wk = lk * weight(k, t);
    total = total.defined() ? total + wk : wk;
  }
  return total;
}

double auc(const torch::Tensor& scores_in, const torch::Tensor& labels_in,
           const torch::Tensor& mask) {
  auto scores = scores_in.detach().reshape({-1}).to(at::kCPU, at::kDouble);
  auto labels = labels_in.detach().reshape({-1}).to(at::kCPU, at::kDouble);
  if (mask.defined()) {
    const auto m = mask.reshape({-1}).to(at::kCPU, at::kBool);
    scores = scores.index({m});
    labels = labels.index({m});
  }
  const int64_t n = scores.size(0);
  const double pos = (labels > 0.5).sum().item<double>(), neg = static_cast<double>(n) - pos;
  if (pos == 0 || neg == 0) return std::numeric_limits<double>::quiet_NaN();
  // Mann–Whitney: average ranks for ties.
  const auto order = std::get<1>(scores.sort());
  const auto s = scores.index_select(0, order);
  const auto l = labels.index_select(0, order);
  auto sa = s.accessor<double, 1>();
  auto la = l.accessor<double, 1>();
  double rank_sum = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j + 1 < n && sa[j + 1] == sa[i]) ++j;
    const double avg = 0.5 * static_cast<double>(i + j) + 1.0;
    for (int64_t q = i; q <= j; ++q)
      if (la[q] > 0.5) rank_sum += avg;
    i = j + 1;
  }
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

double masked_mse(const torch::Tensor& pred, const torch::Tensor& target,
                  const torch::Tensor& mask) {
  auto d = (pred.reshape({-1}).to(at::kDouble) - target.reshape({-1}).to(at::kDouble)).pow(2);
  if (mask.defined()) d = d.index({mask.reshape({-1}).to(at::kBool)});
  if (d.numel() == 0) return std::numeric_limits<double>::quiet_NaN();
  return d.mean().item<double>();
}

double pearson(const torch::Tensor& a_in, const torch::Tensor& b_in) {
  const auto a = a_in.reshape({-1}).to(at::kDouble), b = b_in.reshape({-1}).to(at::kDouble);
  const auto da = a - a.mean(), db = b - b.mean();
  return ((da * db).sum() / (da.pow(2).sum().sqrt() * db.pow(2).sum().sqrt())).item<double>();
}

}  // namespace moe
