#include "support/test_util.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace moe::testing {

::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                     double rtol, double atol) {
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream s;
    s << "shape mismatch: " << actual.sizes() << " vs " << expected.sizes();
    return ::testing::AssertionFailure() << s.str();
  }
  const auto a = actual.detach().to(at::kDouble).to(at::kCPU);
  const auto b = expected.detach().to(at::kDouble).to(at::kCPU);
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  if (!at::isfinite(a).all().item<bool>() || !at::isfinite(b).all().item<bool>()) {
    return ::testing::AssertionFailure() << "non-finite values";
  }
  const auto diff = (a - b).abs();
  const auto bad = diff > (atol + rtol * b.abs());
  if (bad.any().item<bool>()) {
    std::ostringstream s;
    s << bad.sum().item<int64_t>() << " of " << a.numel()
      << " elements differ; max |diff| = " << diff.max().item<double>() << " (rtol " << rtol
      << ", atol " << atol << ")";
    return ::testing::AssertionFailure() << s.str();
  }
  return ::testing::AssertionSuccess();
}

double nmse(const torch::Tensor& actual, const torch::Tensor& expected) {
  const auto a = actual.detach().to(at::kDouble), b = expected.detach().to(at::kDouble);
  return (a - b).pow(2).sum().item<double>() / std::max(b.pow(2).sum().item<double>(), 1e-300);
}

double topk_margin(const torch::Tensor& logits, int64_t k) {
  const int64_t E = logits.size(-1);
  if (k >= E || logits.numel() == 0) return std::numeric_limits<double>::infinity();
  const auto top = std::get<0>(logits.detach().to(at::kDouble).reshape({-1, E}).topk(k + 1, 1));
  return (top.select(1, k - 1) - top.select(1, k)).min().item<double>();
}

bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto ac = a.detach().contiguous().to(at::kCPU), bc = b.detach().contiguous().to(at::kCPU);
  return std::memcmp(ac.data_ptr(), bc.data_ptr(), ac.nbytes()) == 0;
}

::testing::AssertionResult throws_with(const std::function<void()>& f,
                                       const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& p : parts) {
      if (msg.find(p) == std::string::npos) {
        return ::testing::AssertionFailure() << "message lacks '" << p << "': " << msg;
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-c10 exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace moe::testing

namespace moe::testing {

CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

namespace {
// The directory of the first mapped file whose directory ends in `name` ("" if none).
std::string mapped_dir_named(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const std::string needle = "/" + name + "/";
  while (std::getline(maps, line)) {
    const auto at = line.find(needle);
    const auto path = line.find('/');
    if (at != std::string::npos && path != std::string::npos)
      return line.substr(path, at + needle.size() - 1 - path);
  }
  return "";
}
}  // namespace

std::string mapped_openblas_build() {
  if (!mapped_dir_named("openblas-openmp").empty()) return "openmp";
  if (!mapped_dir_named("openblas-pthread").empty()) return "pthread";
  return "";
}

std::string openblas_openmp_dir_next_to_mapped() {
  const auto pthread = mapped_dir_named("openblas-pthread");
  if (pthread.empty()) return "";
  const auto dir = std::filesystem::path(pthread).parent_path() / "openblas-openmp";
  return std::filesystem::exists(dir / "libblas.so.3") ? dir.string() : "";
}

TempDir::TempDir() {
  std::string t = (std::filesystem::temp_directory_path() / "moe_test_XXXXXX").string();
  if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("TempDir: mkdtemp failed");
  path = t;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

}  // namespace moe::testing
