// A step counter kept in a [1] int64 buffer of a layer (so that checkpoints carry it) and mirrored
// on the host, so that reading it reads the device only when something other than this object
// wrote to the buffer since (a checkpoint load, a user's fill_), as the buffer's version counter
// tells. A training forward on a GPU thus advances its counters without a host synchronisation.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace moe::nn {

class BufferCounter {
 public:
  /// Starts mirroring `buffer` ([1] int64), whose value is read at the first get().
  void attach(torch::Tensor buffer) {
    buffer_ = std::move(buffer);
    version_ = -1;
  }
  const torch::Tensor& buffer() const { return buffer_; }

  int64_t get() const {
    if (version_ != buffer_._version()) {
      value_ = buffer_.item<int64_t>();
      version_ = buffer_._version();
    }
    return value_;
  }
  void set(int64_t value) {
    buffer_.fill_(value);
    value_ = value;
    version_ = buffer_._version();
  }

 private:
  torch::Tensor buffer_;
  mutable int64_t value_ = 0;
  mutable int64_t version_ = -1;
};

}  // namespace moe::nn
