// Progress (tools/train/progress.h).
#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace moe::train {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::llround(seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  return buf;
}

Progress::Progress(int64_t total, int64_t first, std::FILE* out, int interactive,
                   double plain_interval_s, std::FILE* messages)
    : total_(total),
      first_(first),
      messages_(messages),
      interactive_(interactive < 0 ? ::isatty(STDERR_FILENO) != 0 && std::getenv("CI") == nullptr
                                   : interactive != 0),
      plain_interval_s_(plain_interval_s) {
  out_ = out != nullptr ? out : interactive_ ? stderr : stdout;
}

std::string Progress::line(int64_t step, double loss, double tokens_per_s, double elapsed) const {
  const int64_t done = step - first_;
  const double rate = elapsed > 0 ? done / elapsed : 0;
  const double eta = rate > 0 ? (total_ - step) / rate : NAN;
  const int width = 24;
  const int fill =
      total_ > 0 ? static_cast<int>(width * std::min<int64_t>(step, total_) / total_) : 0;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "step %lld/%lld [%s%s] %5.1f%%  %.2f steps/s  %.0f tokens/s  loss %.4f  ETA %s",
                static_cast<long long>(step), static_cast<long long>(total_),
                std::string(fill, '#').c_str(), std::string(width - fill, '.').c_str(),
                total_ > 0 ? 100.0 * step / total_ : 100.0, rate, tokens_per_s, loss,
                format_duration(eta).c_str());
  return buf;
}

void Progress::update(int64_t step, double loss, double tokens_per_s, double elapsed) {
  last_ = line(step, loss, tokens_per_s, elapsed);
  if (interactive_) {
    std::fprintf(out_, "\r%s\033[K", last_.c_str());
    live_ = true;
  } else if (elapsed - last_plain_ >= plain_interval_s_ || step >= total_) {
    std::fprintf(out_, "%s\n", last_.c_str());
    last_plain_ = elapsed;
  }
  std::fflush(out_);
}

void Progress::note(const std::string& message) {
  if (live_) std::fprintf(out_, "\r\033[K");
  std::fprintf(messages_, "%s\n", message.c_str());  // messages are output, the live line is not
  std::fflush(messages_);
  if (live_) std::fprintf(out_, "%s", last_.c_str());
  std::fflush(out_);
}

void Progress::finish() {
  if (live_) std::fprintf(out_, "\n");
  live_ = false;
  std::fflush(out_);
}

}  // namespace moe::train
