// TensorBoard event files without TensorFlow: the scalars of a run (the same values as
// metrics.jsonl) in `events.out.tfevents.<unix time>.<host>`, so `tensorboard --logdir runs/` shows
// every run. The format: records of [uint64 length][uint32 masked CRC-32C of the length][data]
// [uint32 masked CRC-32C of the data], each data an Event protocol buffer (wall_time, step, and a
// Summary of (tag, simple_value) pairs), encoded here by hand; the first event is the file version.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace moe::train {

/// TensorFlow's masked CRC-32C ((crc >> 15 | crc << 17) + 0xa282ead8; the CRC: moe/io/crc32c.h).
uint32_t masked_crc32c(const void* data, size_t n);

class EventWriter {
 public:
  /// Creates a new event file in `dir` (which must exist). Errors name the file.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  /// One event with these scalars at `step`; written and flushed at once.
  void scalars(int64_t step, double wall_time,
               const std::vector<std::pair<std::string, double>>& values);
  /// A resumed run: SessionLog START at the checkpoint's step, after which TensorBoard drops the
  /// events of earlier files with larger steps (those a killed session wrote after its last
  /// checkpoint).
  void session_start(int64_t step, double wall_time);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace moe::train
