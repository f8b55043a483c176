// The number of experts per token as a function of the training step: SMoE-Dropout's "dropout" is a
// k that grows in training; HyperRouter trains with the same schedule (docs/algorithms.md §3.1).
#pragma once

#include <cstdint>

namespace moe {

class TopKSchedule {
 public:
  /// The modes of the authors' calculate_gate_number. With r = round-half-to-even (Python's round),
  /// t the step and T the length, every value is finally clipped to [k_min, k_max]:
  enum class Mode {
    kConstant,           ///< k_max
    kLinearIncrease,     ///< r((k_max - k_min)·t/T) + k_min            (the shipped setting)
    kLinearDecrease,     ///< r((k_min - k_max)·t/T) + k_max
    kCosineIncrease,     ///< r((k_min - k_max)·cos(π t / 2T)) + k_max
    kCosineDecrease,     ///< r((k_max - k_min)·cos(π t / 2T)) + k_min
    kExpIncrease,        ///< r((k_min - k_max)·0.99^(t div max(1, T div 300))) + k_max
    kMultiStepIncrease,  ///< [1, 2, 4, 8, 16][floor(5 t / T)] (the last entry from t >= T on)
    kMultiStepDecrease,  ///< [16, 8, 4, 2, 1][floor(5 t / T)]
  };

  /// A constant k.
  static TopKSchedule constant(int64_t k);
  /// Validates: 1 <= k_min <= k_max, total_steps >= 1 (c10::ValueError naming the value).
  TopKSchedule(Mode mode, int64_t k_min, int64_t k_max, int64_t total_steps);

  /// k at training step t (t >= 0; steps past T keep the end value).
  int64_t at(int64_t step) const;

  Mode mode() const { return mode_; }
  int64_t k_min() const { return k_min_; }
  int64_t k_max() const { return k_max_; }
  int64_t total_steps() const { return total_; }

 private:
  Mode mode_;
  int64_t k_min_, k_max_, total_;
};

const char* to_string(TopKSchedule::Mode m);

}  // namespace moe
