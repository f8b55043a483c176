// ExpertSchedule: when TopAnyMoE records and updates (include/moe/nn/expert_schedule.h, §2.4).
#include "moe/nn/expert_schedule.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace moe::nn {

ExpertSchedule ExpertSchedule::manual() { return ExpertSchedule(Kind::kManual, 0, 0, 0, 0); }

ExpertSchedule ExpertSchedule::window(int64_t record, int64_t period) {
  TORCH_CHECK_VALUE(record >= 1, "ExpertSchedule::window: record must be >= 1, got ", record);
  TORCH_CHECK_VALUE(period > record, "ExpertSchedule::window: period must be > record=", record,
                    " (windows may not overlap), got ", period);
  return ExpertSchedule(Kind::kWindow, record, period, 0, 0);
}

ExpertSchedule ExpertSchedule::epoch_fraction(int64_t forwards_per_epoch, double begin,
                                              double end) {
  TORCH_CHECK_VALUE(forwards_per_epoch >= 2,
                    "ExpertSchedule::epoch_fraction: forwards_per_epoch must be >= 2, got ",
                    forwards_per_epoch);
  TORCH_CHECK_VALUE(
      std::isfinite(begin) && std::isfinite(end) && begin >= 0 && begin < end && end < 1,
      "ExpertSchedule::epoch_fraction: need 0 <= begin < end < 1, got begin=", begin,
      ", end=", end);
  const auto n = static_cast<double>(forwards_per_epoch);
  TORCH_CHECK_VALUE(std::floor(begin * n) < std::floor(end * n),
                    "ExpertSchedule::epoch_fraction: begin=", begin, " and end=", end,
                    " fall on the same forward of a ", forwards_per_epoch, "-forward epoch");
  return ExpertSchedule(Kind::kEpochFraction, 0, forwards_per_epoch, begin, end);
}

ExpertSchedule ExpertSchedule::every_step() { return ExpertSchedule(Kind::kEveryStep, 0, 0, 0, 0); }

bool ExpertSchedule::begins_before(int64_t c) const {
  switch (kind_) {
    case Kind::kManual:
      return false;
    case Kind::kWindow:
      return c >= a_ && (c - a_) % b_ == 0;
    case Kind::kEpochFraction:
      return (c - 1) % b_ == static_cast<int64_t>(std::floor(begin_ * static_cast<double>(b_)));
    case Kind::kEveryStep:
      return true;
  }
  return false;
}

bool ExpertSchedule::updates_after(int64_t c) const {
  switch (kind_) {
    case Kind::kManual:
      return false;
    case Kind::kWindow:
      return c >= 2 * a_ && (c - 2 * a_) % b_ == 0;
    case Kind::kEpochFraction:
      return (c - 1) % b_ == static_cast<int64_t>(std::floor(end_ * static_cast<double>(b_)));
    case Kind::kEveryStep:
      return true;
  }
  return false;
}

}  // namespace moe::nn
