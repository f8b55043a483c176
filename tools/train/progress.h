// The progress display of long work: on a terminal (stderr is a tty and $CI is unset) one line
// redrawn in place on stderr (step, steps/s, tokens/s, loss, ETA); otherwise plain periodic lines
// on stdout, so that logs and CI output stay readable.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace moe::train {

/// "1h02m", "3m05s", "42s".
std::string format_duration(double seconds);

class Progress {
 public:
  /// total: the last step; first: the step the work starts after (a resumed run's checkpoint).
  /// `out` null: stderr when interactive, else stdout; `interactive` -1: whether stderr is a
  /// terminal and $CI is unset. Plain lines come at most every `plain_interval_s` seconds (and at
  /// the last step). Messages (note()) go to `messages`.
  Progress(int64_t total, int64_t first, std::FILE* out = nullptr, int interactive = -1,
           double plain_interval_s = 5.0, std::FILE* messages = stdout);
  /// After `step` at `elapsed` seconds since the start, with the latest loss and tokens/s.
  void update(int64_t step, double loss, double tokens_per_s, double elapsed);
  /// A message on its own line (the live line is redrawn below it).
  void note(const std::string& message);
  /// Ends the live line.
  void finish();

  /// The text of one update (without the carriage return), for tests.
  std::string line(int64_t step, double loss, double tokens_per_s, double elapsed) const;

 private:
  int64_t total_, first_;
  std::FILE* out_;
  std::FILE* messages_;
  bool interactive_;
  double plain_interval_s_;
  double last_plain_ = -1e300;
  bool live_ = false;  // a live line is on screen
  std::string last_;
};

}  // namespace moe::train
