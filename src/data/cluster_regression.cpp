// ClusterRegression (include/moe/data/cluster_regression.h).
#include "moe/data/cluster_regression.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace moe::data {

ClusterRegression::ClusterRegression(ClusterRegressionOptions o) : options_(o) {
  TORCH_CHECK_VALUE(o.clusters() >= 1, "ClusterRegression: clusters must be >= 1, got ",
                    o.clusters());
  TORCH_CHECK_VALUE(o.dim() >= 1, "ClusterRegression: dim must be >= 1, got ", o.dim());
  TORCH_CHECK_VALUE(o.teacher_hidden() >= 1, "ClusterRegression: teacher_hidden must be >= 1, got ",
                    o.teacher_hidden());
  TORCH_CHECK_VALUE(std::isfinite(o.radius()) && std::isfinite(o.noise()) && o.noise() >= 0,
                    "ClusterRegression: radius must be finite and noise finite and >= 0, got ",
                    o.radius(), " and ", o.noise());
  auto gen = at::detail::createCPUGenerator(o.seed());
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const int64_t M = o.clusters(), d = o.dim(), th = o.teacher_hidden();
  auto u = at::randn({M, d}, gen, f);
  centres_ = u / u.norm(2, {1}, true) * o.radius();
  a_ = at::randn({M, d, th}, gen, f);
  b_ = at::randn({M, th, d}, gen, f);
}

RegressionBatch ClusterRegression::sample(int64_t n, uint64_t seed, int64_t clusters) const {
  TORCH_CHECK_VALUE(n >= 0, "ClusterRegression::sample: n must be >= 0, got ", n);
  TORCH_CHECK_VALUE(clusters >= 0 && clusters <= options_.clusters(),
                    "ClusterRegression::sample: clusters must be in [0, ", options_.clusters(),
                    "] (0 = all), got ", clusters);
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f = at::TensorOptions().dtype(at::kFloat);
  const int64_t d = options_.dim();
  RegressionBatch b;
  b.cluster =
      at::randint(clusters > 0 ? clusters : options_.clusters(), {n}, gen, f.dtype(at::kLong));
  b.x = centres_.index_select(0, b.cluster) + at::randn({n, d}, gen, f) * options_.noise();
  const auto h = at::tanh(at::bmm(b.x.unsqueeze(1), a_.index_select(0, b.cluster)) /
                          std::sqrt(static_cast<double>(d)));
  b.y = at::bmm(h, b_.index_select(0, b.cluster)).squeeze(1) /
        std::sqrt(static_cast<double>(options_.teacher_hidden()));
  return b;
}

}  // namespace moe::data
