// Fashion-MNIST IDX reader (include/moe/data/fashion_mnist.h).
#include "moe/data/fashion_mnist.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <memory>
#include <vector>

namespace moe::data {
namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using Gz = std::unique_ptr<gzFile_s, GzCloser>;

uint32_t read_be32(gzFile f, const std::string& path) {
  unsigned char b[4];
  TORCH_CHECK(gzread(f, b, 4) == 4, "Fashion-MNIST: ", path, ": truncated IDX header");
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

// A gzipped IDX file (magic 0x801 labels, 0x803 images) as a uint8 tensor.
at::Tensor read_idx(const std::string& path, uint32_t magic, int64_t count) {
  Gz f(gzopen(path.c_str(), "rb"));
  TORCH_CHECK(f != nullptr, "Fashion-MNIST: cannot open ", path,
              "; the data comes from the Debian package dataset-fashion-mnist (`make deps`), or "
              "give the folder that holds the four *-ubyte.gz files");
  const uint32_t m = read_be32(f.get(), path);
  TORCH_CHECK(m == magic, "Fashion-MNIST: ", path, ": IDX magic ", m, ", expected ", magic);
  std::vector<int64_t> shape{read_be32(f.get(), path)};
  for (uint32_t i = 1; i < (magic & 0xff); ++i) shape.push_back(read_be32(f.get(), path));
  TORCH_CHECK(shape[0] == count, "Fashion-MNIST: ", path, ": ", shape[0], " items, expected ",
              count);
  auto t = at::empty(shape, at::TensorOptions().dtype(at::kByte));
  const auto n = static_cast<unsigned>(t.numel());
  TORCH_CHECK(gzread(f.get(), t.data_ptr<uint8_t>(), n) == static_cast<int>(n),
              "Fashion-MNIST: ", path, ": truncated data");
  return t;
}

}  // namespace

LabeledImages load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = dir + (train ? "/train" : "/t10k");
  const int64_t n = train ? 60000 : 10000;
  const auto img = read_idx(prefix + "-images-idx3-ubyte.gz", 0x803, n);
  const auto lab = read_idx(prefix + "-labels-idx1-ubyte.gz", 0x801, n);
  auto x = img.reshape({n, 784}).to(at::kFloat).div_(255.0).sub_(0.2860).div_(0.3530);
  return {x, lab.to(at::kLong)};
}

}  // namespace moe::data
