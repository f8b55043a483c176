// The Fashion-MNIST reader (include/moe/data/fashion_mnist.h) on the real files of the Debian
// package and on damaged copies.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <string>

#include "moe/data/fashion_mnist.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;

TEST(FashionMnist, ReadsThePackagedTestSet) {
  if (!fs::exists(std::string(moe::data::kFashionMnistDir) + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto d = moe::data::load_fashion_mnist(moe::data::kFashionMnistDir, /*train=*/false);
  EXPECT_EQ(d.x.sizes(), (std::vector<int64_t>{10000, 784}));
  EXPECT_EQ(d.y.sizes(), (std::vector<int64_t>{10000}));
  EXPECT_EQ(d.y.min().item<int64_t>(), 0);
  EXPECT_EQ(d.y.max().item<int64_t>(), 9);
  EXPECT_EQ(torch::bincount(d.y).min().item<int64_t>(), 1000);  // 1000 images per class
  // Standardised with the training-set statistics: close to mean 0, std 1 on the test set too.
  EXPECT_NEAR(d.x.mean().item<double>(), 0.0, 0.05);
  EXPECT_NEAR(d.x.std().item<double>(), 1.0, 0.05);
}

TEST(FashionMnist, MissingAndDamagedFilesGiveClearErrors) {
  std::string tmpl = (fs::temp_directory_path() / "moe_fmnist_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  EXPECT_TRUE(
      mt::throws_with([&] { moe::data::load_fashion_mnist(dir.string(), false); },
                      {"cannot open", "t10k-images-idx3-ubyte.gz", "dataset-fashion-mnist"}));
  auto write_gz = [&](const std::string& name, const std::string& bytes) {
    gzFile f = gzopen((dir / name).c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  };
  // A wrong magic number, then a right header with a wrong count, then a truncated body.
  write_gz("t10k-images-idx3-ubyte.gz", std::string("\x00\x00\x08\x01", 4));
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_fashion_mnist(dir.string(), false); },
                              {"IDX magic 2049", "expected 2051"}));
  write_gz("t10k-images-idx3-ubyte.gz", std::string("\x00\x00\x08\x03\x00\x00\x00\x05", 8));
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_fashion_mnist(dir.string(), false); },
                              {"truncated IDX header"}));
  write_gz("t10k-images-idx3-ubyte.gz",
           std::string("\x00\x00\x08\x03\x00\x00\x27\x10\x00\x00\x00\x1c\x00\x00\x00\x1c", 16) +
               std::string(100, '\x01'));
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_fashion_mnist(dir.string(), false); },
                              {"truncated data"}));
  fs::remove_all(dir);
}

}  // namespace
