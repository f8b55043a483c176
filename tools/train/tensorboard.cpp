// EventWriter (tools/train/tensorboard.h).
#include "train/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <stdexcept>

#include "moe/io/crc32c.h"

namespace moe::train {
namespace {

// Protocol-buffer encoding of the few fields an Event needs.
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void key(std::string& out, int field, int wire_type) { varint(out, (field << 3) | wire_type); }
template <typename T>
void little_endian(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // x86-64 and every platform libtorch supports: little-endian
  out.append(b, sizeof(T));
}
void bytes_field(std::string& out, int field, const std::string& bytes) {
  key(out, field, 2);
  varint(out, bytes.size());
  out += bytes;
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
std::string event(double wall_time, int64_t step) {
  std::string e;
  key(e, 1, 1);
  little_endian(e, wall_time);
  key(e, 2, 0);
  varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = io::crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  const auto now = std::chrono::system_clock::now();
  const double wall = std::chrono::duration<double>(now.time_since_epoch()).count();
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(wall)) + "." + host;
  file_ = std::fopen(path_.c_str(), "ab");
  if (file_ == nullptr) throw std::runtime_error("moe train: cannot create " + path_);
  std::string e = event(wall, 0);
  bytes_field(e, 3, "brain.Event:2");
  write_record(e);
}

EventWriter::~EventWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void EventWriter::scalars(int64_t step, double wall_time,
                          const std::vector<std::pair<std::string, double>>& values) {
  // Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    bytes_field(value, 1, tag);
    key(value, 2, 5);
    little_endian(value, static_cast<float>(v));
    bytes_field(summary, 1, value);
  }
  std::string e = event(wall_time, step);
  bytes_field(e, 5, summary);
  write_record(e);
}

void EventWriter::session_start(int64_t step, double wall_time) {
  // Event.session_log = 6: SessionLog { SessionStatus status = 1 } with START = 1
  std::string session_log;
  key(session_log, 1, 0);
  varint(session_log, 1);
  std::string e = event(wall_time, step);
  bytes_field(e, 6, session_log);
  write_record(e);
}

void EventWriter::write_record(const std::string& data) {
  std::string r;
  const uint64_t n = data.size();
  little_endian(r, n);
  little_endian(r, masked_crc32c(&n, sizeof n));
  r += data;
  little_endian(r, masked_crc32c(data.data(), data.size()));
  if (std::fwrite(r.data(), 1, r.size(), file_) != r.size() || std::fflush(file_) != 0)
    throw std::runtime_error("moe train: cannot write " + path_);
}

}  // namespace moe::train
