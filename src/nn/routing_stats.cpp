// RoutingStats: statistics as tensors, numbers on request (include/moe/stats.h).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "moe/stats.h"

namespace moe {
namespace {

int64_t count(const torch::Tensor& t) { return t.defined() ? t.item<int64_t>() : 0; }

double coefficient_of_variation(const torch::Tensor& v) {
  if (!v.defined() || v.numel() == 0) return 0.0;
  const auto d = v.to(at::kDouble);
  const double mean = d.mean().item<double>();
  if (!(mean > 0)) return 0.0;
  return std::sqrt((d - mean).pow(2).mean().item<double>()) / mean;
}

}  // namespace

double RoutingStats::dropped_fraction() const {
  const int64_t a = count(assigned);
  return a > 0 ? static_cast<double>(count(dropped)) / static_cast<double>(a) : 0.0;
}

int64_t RoutingStats::skipped_tokens() const { return count(skipped); }

double RoutingStats::experts_per_token_mean() const {
  if (!experts_per_token.defined() || experts_per_token.numel() == 0) return 0.0;
  return experts_per_token.to(at::kDouble).mean().item<double>();
}

int64_t RoutingStats::experts_per_token_min() const {
  if (!experts_per_token.defined() || experts_per_token.numel() == 0) return 0;
  return experts_per_token.min().item<int64_t>();
}

int64_t RoutingStats::experts_per_token_max() const {
  if (!experts_per_token.defined() || experts_per_token.numel() == 0) return 0;
  return experts_per_token.max().item<int64_t>();
}

double RoutingStats::cv_importance() const { return coefficient_of_variation(importance); }
double RoutingStats::cv_load() const { return coefficient_of_variation(load); }
int64_t RoutingStats::active_experts() const { return count(num_active_experts); }
int64_t RoutingStats::tokens_without_expert() const { return count(unrouted); }

torch::Tensor find_loss_term(const LossTerms& terms, const std::string& name) {
  for (const auto& [n, t] : terms)
    if (n == name) return t;
  return {};
}

double RoutingStats::loss_term(const std::string& name) const {
  const auto t = find_loss_term(loss_terms, name);
  return t.defined() ? t.item<double>() : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace moe
