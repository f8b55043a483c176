// When a TopAnyMoE layer records its routing and updates its expert set (docs/algorithms.md §2.4).
//
// All schedules count the layer's training forward calls (1-based; one call per optimizer step
// unless gradients are accumulated over micro-batches, as in the reference).
#pragma once

#include <cstdint>

namespace moe::nn {

class ExpertSchedule {
 public:
  enum class Kind {
    kManual,         ///< only begin_recording() / finish_recording() / update_experts()
    kWindow,         ///< DeepSpeed: record `record` forwards once every `period` forwards
    kEpochFraction,  ///< Tutel GLUE: record from 1/2 to 3/4 of every epoch
    kEveryStep,      ///< Tutel DomainBed: record every forward, update after each
  };

  /// No automatic updates.
  static ExpertSchedule manual();
  /// Begins before forward c when c >= record and (c - record) % period == 0; updates after
  /// forward c when c >= 2·record and (c - 2·record) % period == 0. window(300, 900) is the
  /// reference: records forwards 300..600, 1200..1500, ... Requires 1 <= record < period.
  static ExpertSchedule window(int64_t record = 300, int64_t period = 900);
  /// With i = (c - 1) % forwards_per_epoch: begins before the forward with i = floor(begin·n),
  /// updates after the forward with i = floor(end·n). Requires 0 <= begin < end < 1 and the two
  /// indices distinct.
  static ExpertSchedule epoch_fraction(int64_t forwards_per_epoch, double begin = 0.5,
                                       double end = 0.75);
  /// Records every forward and updates after each one.
  static ExpertSchedule every_step();

  /// Whether recording begins (records reset) just before training forward `c`.
  bool begins_before(int64_t c) const;
  /// Whether the update is due right after training forward `c`.
  bool updates_after(int64_t c) const;

  Kind kind() const { return kind_; }
  int64_t record() const { return a_; }
  int64_t period() const { return b_; }
  int64_t forwards_per_epoch() const { return b_; }
  double begin_fraction() const { return begin_; }
  double end_fraction() const { return end_; }

 private:
  ExpertSchedule(Kind kind, int64_t a, int64_t b, double begin, double end)
      : kind_(kind), a_(a), b_(b), begin_(begin), end_(end) {}
  Kind kind_;
  int64_t a_, b_;  // window: record, period; epoch: -, forwards per epoch
  double begin_, end_;
};

}  // namespace moe::nn
