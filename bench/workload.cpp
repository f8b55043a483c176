#include "workload.h"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>

#include "moe/gating.h"

namespace moe::bench {

const std::vector<Shape>& cpu_shapes() {
  static const std::vector<Shape> shapes{
      {"C0", 2048, 256, 1024, 8, 2, Activation::kReLU},
      {"C1", 8192, 512, 2048, 8, 2, Activation::kReLU},
      {"C2", 8192, 512, 2048, 64, 1, Activation::kReLU},
      {"C3", 8192, 512, 256, 64, 8, Activation::kSwiGLU},
      {"C4", 4096, 1024, 3584, 8, 2, Activation::kSwiGLU},
      {"C5", 16384, 512, 512, 128, 4, Activation::kSwiGLU},
  };
  return shapes;
}

const std::vector<Shape>& gpu_shapes() {
  static const std::vector<Shape> shapes{
      {"G1", 16384, 4096, 14336, 8, 2, Activation::kSwiGLU},  // Mixtral-8x7B
      {"G2", 32768, 2048, 768, 128, 8, Activation::kSwiGLU},  // Qwen3-30B-A3B
      {"G3", 8192, 7168, 2048, 256, 8, Activation::kSwiGLU},  // DeepSeek-V3 (E = 256)
      {"G4", 32768, 768, 3072, 64, 1, Activation::kReLU},     // MegaBlocks MoE-Small
      {"G5", 32768, 768, 2048, 128, 1, Activation::kReLU},    // Switch-Base-128
      {"G6", 16384, 2048, 1408, 64, 6, Activation::kSwiGLU},  // DeepSeek-V2-Lite, routed part
  };
  return shapes;
}

const Shape& shape_by_id(const std::string& id) {
  for (const auto* list : {&cpu_shapes(), &gpu_shapes()})
    for (const auto& s : *list)
      if (s.id == id) return s;
  throw std::invalid_argument("unknown shape '" + id + "' (C0..C5, G1..G6)");
}

const std::vector<std::string>& distributions() {
  static const std::vector<std::string> d{"balanced", "uniform", "skewed"};
  return d;
}

Routing make_routing(const Shape& s, const std::string& dist, uint64_t seed) {
  torch::manual_seed(seed);
  Routing r;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  if (dist == "balanced") {
    // Round robin over all T·k slots: every expert gets exactly T·k/E, the k of a token are
    // distinct.
    r.expert_index = (at::arange(s.T * s.k, f32.dtype(at::kLong)) % s.E).view({s.T, s.k});
  } else if (dist == "uniform") {
    r.expert_index = std::get<0>(topk_lowest_index(at::randn({s.T, s.E}, f32), s.k));
  } else if (dist == "skewed") {
    auto p = at::pow(at::arange(1, s.E + 1, f32), -1.2);
    r.expert_index = at::multinomial(p.expand({s.T, s.E}), s.k, /*replacement=*/false);
  } else {
    throw std::invalid_argument("unknown routing distribution '" + dist + "'");
  }
  r.gate = at::softmax(at::randn({s.T, s.k}, f32), -1);
  const auto counts = at::bincount(r.expert_index.reshape({-1}), {}, s.E).to(at::kDouble);
  r.imbalance = counts.max().item<double>() / counts.mean().item<double>();
  return r;
}

Workload make_workload(const Shape& s, const std::string& dist, c10::ScalarType dtype,
                       uint64_t seed) {
  Routing r = make_routing(s, dist, seed);  // seeds the generator
  Workload w;
  w.shape = s;
  w.dist = dist;
  w.dtype = dtype;
  w.expert_index = r.expert_index;
  w.gate = r.gate;
  w.imbalance = r.imbalance;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  w.x = at::randn({s.T, s.d}, f32).to(dtype);
  w.w.w1 = (at::randn({s.E, s.d, s.d_ff}, f32) / std::sqrt(double(s.d))).to(dtype);
  w.w.w2 = (at::randn({s.E, s.d_ff, s.d}, f32) / std::sqrt(double(s.d_ff))).to(dtype);
  if (is_gated(s.act))
    w.w.w3 = (at::randn({s.E, s.d, s.d_ff}, f32) / std::sqrt(double(s.d))).to(dtype);
  w.grad_out = at::randn({s.T, s.d}, f32).to(dtype);
  set_requires_grad(w, false);
  return w;
}

void set_requires_grad(Workload& w, bool on) {
  for (auto* t : {&w.x, &w.gate, &w.w.w1, &w.w.w2, &w.w.w3}) {
    if (!t->defined()) continue;
    *t = t->detach();
    t->requires_grad_(on);
  }
  auto leaves = [&](const torch::Tensor& stacked, std::vector<torch::Tensor>& out) {
    out.clear();
    if (!stacked.defined()) return;
    for (int64_t e = 0; e < stacked.size(0); ++e)
      out.push_back(stacked[e].detach().clone().requires_grad_(on));
  };
  leaves(w.w.w1, w.w1s);
  leaves(w.w.w2, w.w2s);
  leaves(w.w.w3, w.w3s);
}

}  // namespace moe::bench
