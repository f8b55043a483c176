// Fashion-MNIST from the Debian package dataset-fashion-mnist (gzipped IDX files).
#pragma once

#include <torch/types.h>

#include <string>

namespace moe::data {

/// Where the Debian package installs the four *-ubyte.gz files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

struct LabeledImages {
  torch::Tensor x;  ///< [N, 784] float32, standardised (mean 0.2860, std 0.3530 of the train set)
  torch::Tensor y;  ///< [N] int64 in [0, 10)
};

/// The 60000 training or 10000 test images. A missing, truncated or malformed file raises
/// c10::Error naming the file, the problem and how to get the data.
LabeledImages load_fashion_mnist(const std::string& dir, bool train);

}  // namespace moe::data
