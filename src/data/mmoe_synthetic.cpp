// MMoE synthetic data (include/moe/data/mmoe_synthetic.h).
#include "moe/data/mmoe_synthetic.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace moe::data {

MMoESynthetic::MMoESynthetic(MMoESyntheticOptions o) : options_(o) {
  TORCH_CHECK_VALUE(o.dim() >= 2, "MMoESynthetic: dim must be >= 2 (two orthogonal vectors), got ",
                    o.dim());
  TORCH_CHECK_VALUE(std::isfinite(o.correlation()) && o.correlation() >= -1 && o.correlation() <= 1,
                    "MMoESynthetic: correlation p must be in [-1, 1], got ", o.correlation());
  TORCH_CHECK_VALUE(o.sine_terms() >= 0, "MMoESynthetic: sine_terms must be >= 0, got ",
                    o.sine_terms());
  TORCH_CHECK_VALUE(std::isfinite(o.scale()) && std::isfinite(o.noise_std()) && o.noise_std() >= 0,
                    "MMoESynthetic: scale must be finite and noise_std finite and >= 0, got ",
                    o.scale(), " and ", o.noise_std());
  auto gen = at::detail::createCPUGenerator(o.seed());
  const auto f = at::TensorOptions().dtype(at::kDouble);
  // Two orthonormal vectors by Gram–Schmidt on Gaussian draws.
  auto u1 = at::randn({o.dim()}, gen, f);
  u1 = u1 / u1.norm();
  auto u2 = at::randn({o.dim()}, gen, f);
  u2 = u2 - u2.dot(u1) * u1;
  u2 = u2 / u2.norm();
  const double p = o.correlation();
  w1_ = o.scale() * u1;
  w2_ = o.scale() * (p * u1 + std::sqrt(std::max(0.0, 1 - p * p)) * u2);
  alpha_ = at::randn({o.sine_terms()}, gen, f);
  beta_ = at::randn({o.sine_terms()}, gen, f);
}

double MMoESynthetic::weight_cosine() const {
  return (w1_.dot(w2_) / (w1_.norm() * w2_.norm())).item<double>();
}

MultiTaskBatch MMoESynthetic::sample(int64_t n, uint64_t seed) const {
  TORCH_CHECK_VALUE(n >= 0, "MMoESynthetic::sample: n must be >= 0, got ", n);
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f = at::TensorOptions().dtype(at::kDouble);
  const auto x = at::randn({n, options_.dim()}, gen, f);
  auto label = [&](const torch::Tensor& w) {
    const auto z = x.mv(w);  // [n]
    auto y = z.clone();
    if (options_.sine_terms() > 0)
      y = y + at::sin(z.unsqueeze(1) * alpha_.unsqueeze(0) + beta_.unsqueeze(0)).sum(1);
    return y + at::randn({n}, gen, f) * options_.noise_std();
  };
  const auto y1 = label(w1_);
  const auto y2 = label(w2_);
  return {x.to(at::kFloat), at::stack({y1, y2}, 1).to(at::kFloat)};
}

}  // namespace moe::data
