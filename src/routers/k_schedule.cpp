// TopKSchedule (include/moe/routers/k_schedule.h).
#include "moe/routers/k_schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cfenv>
#include <cmath>

namespace moe {
namespace {

// Python's round(): to the nearest integer, ties to even (std::nearbyint in the default mode).
int64_t round_half_even(double v) {
  const int saved = std::fegetround();
  std::fesetround(FE_TONEAREST);
  const double r = std::nearbyint(v);
  std::fesetround(saved);
  return static_cast<int64_t>(r);
}

}  // namespace

const char* to_string(TopKSchedule::Mode m) {
  switch (m) {
    case TopKSchedule::Mode::kConstant:
      return "constant";
    case TopKSchedule::Mode::kLinearIncrease:
      return "linear_increase";
    case TopKSchedule::Mode::kLinearDecrease:
      return "linear_decrease";
    case TopKSchedule::Mode::kCosineIncrease:
      return "cosine_increase";
    case TopKSchedule::Mode::kCosineDecrease:
      return "cosine_decrease";
    case TopKSchedule::Mode::kExpIncrease:
      return "exp_increase";
    case TopKSchedule::Mode::kMultiStepIncrease:
      return "multi_step_increase";
    case TopKSchedule::Mode::kMultiStepDecrease:
      return "multi_step_decrease";
  }
  return "?";
}

TopKSchedule TopKSchedule::constant(int64_t k) { return TopKSchedule(Mode::kConstant, k, k, 1); }

TopKSchedule::TopKSchedule(Mode mode, int64_t k_min, int64_t k_max, int64_t total_steps)
    : mode_(mode), k_min_(k_min), k_max_(k_max), total_(total_steps) {
  TORCH_CHECK_VALUE(k_min >= 1, "TopKSchedule: k_min must be >= 1, got ", k_min);
  TORCH_CHECK_VALUE(k_min <= k_max, "TopKSchedule: k_min=", k_min, " must be <= k_max=", k_max);
  TORCH_CHECK_VALUE(total_steps >= 1, "TopKSchedule: total_steps must be >= 1 (a schedule of ",
                    total_steps, " steps has no length)");
}

int64_t TopKSchedule::at(int64_t step) const {
  TORCH_CHECK_VALUE(step >= 0, "TopKSchedule: step must be >= 0, got ", step);
  const int64_t t = std::min(step, total_);
  const double f = static_cast<double>(t) / static_cast<double>(total_);
  const double span = static_cast<double>(k_max_ - k_min_);
  const double c = std::cos(M_PI * f / 2.0);
  int64_t k = k_max_;
  switch (mode_) {
    case Mode::kConstant:
      break;
    case Mode::kLinearIncrease:
      k = round_half_even(span * f) + k_min_;
      break;
    case Mode::kLinearDecrease:
      k = round_half_even(-span * f) + k_max_;
      break;
    case Mode::kCosineIncrease:
      k = round_half_even(-span * c) + k_max_;
      break;
    case Mode::kCosineDecrease:
      k = round_half_even(span * c) + k_min_;
      break;
    case Mode::kExpIncrease: {
      const int64_t interval = std::max<int64_t>(1, total_ / 300);
      k = round_half_even(-span * std::pow(0.99, static_cast<double>(t / interval))) + k_max_;
      break;
    }
    case Mode::kMultiStepIncrease:
    case Mode::kMultiStepDecrease: {
      static constexpr int64_t kUp[] = {1, 2, 4, 8, 16};
      const int64_t i = std::min<int64_t>(4, 5 * t / total_);
      k = mode_ == Mode::kMultiStepIncrease ? kUp[i] : kUp[4 - i];
      break;
    }
  }
  return std::clamp(k, k_min_, k_max_);
}

}  // namespace moe
