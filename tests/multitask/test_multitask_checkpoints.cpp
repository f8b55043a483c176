// Checkpoints and legacy parameter names (include/moe/io/checkpoint.h, io::LegacyNames): a module
// that declares the names an earlier version saved loads files written with them, through the
// whole map or not at all.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/cloneable.h>

#include <map>
#include <string>

#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "support/test_util.h"

namespace {

namespace mt = moe::testing;

// Two stacked layers now called w1, w2 (1-based) that an earlier version called w0, w1; and c,
// which kept its name.
class RenamedImpl : public torch::nn::Cloneable<RenamedImpl>, public moe::io::LegacyNames {
 public:
  RenamedImpl() { reset(); }
  void reset() override {
    w1 = register_parameter("w1", torch::zeros({2, 3}));
    w2 = register_parameter("w2", torch::zeros({3, 3}));
    c = register_parameter("c", torch::zeros({4}));
  }
  std::map<std::string, std::string> legacy_names() const override {
    return {{"w0", "w1"}, {"w1", "w2"}};
  }
  torch::Tensor w1, w2, c;
};
TORCH_MODULE(Renamed);

class ParentImpl : public torch::nn::Cloneable<ParentImpl> {
 public:
  ParentImpl() { reset(); }
  void reset() override { child = register_module("child", Renamed()); }
  Renamed child{nullptr};
};
TORCH_MODULE(Parent);

TEST(LegacyNames, ReadsTheOldLayoutThroughTheWholeMap) {
  mt::TempDir dir;
  const auto old_w0 = torch::randn({2, 3}), old_w1 = torch::randn({3, 3}), c = torch::randn({4});
  const auto path = (dir.path / "old.safetensors").string();
  // The old layout has a "w1" too, of another layer and the same shape as the new w2's
  // predecessor: the map must apply as a whole.
  moe::io::save_safetensors(path, {{"child.w0", old_w0}, {"child.w1", old_w1}, {"child.c", c}});
  Parent m;
  moe::io::load_module(*m, path);
  EXPECT_TRUE(mt::bitwise_equal(m->child->w1, old_w0));
  EXPECT_TRUE(mt::bitwise_equal(m->child->w2, old_w1));
  EXPECT_TRUE(mt::bitwise_equal(m->child->c, c));
  const auto file = moe::io::load_safetensors(path);
  EXPECT_EQ(
      moe::io::legacy_sources(*m, file),
      (std::map<std::string, std::string>{{"child.w1", "child.w0"}, {"child.w2", "child.w1"}}));
}

TEST(LegacyNames, TheCurrentLayoutLoadsByItsNames) {
  mt::TempDir dir;
  const auto path = (dir.path / "new.safetensors").string();
  Parent a;
  {
    torch::NoGradGuard g;
    for (auto& p : a->parameters()) p.normal_();
  }
  moe::io::save_module(*a, path);
  Parent b;
  moe::io::load_module(*b, path);
  for (const auto& p : a->named_parameters())
    EXPECT_TRUE(mt::bitwise_equal(b->named_parameters()[p.key()], p.value())) << p.key();
  EXPECT_TRUE(moe::io::legacy_sources(*b, moe::io::load_safetensors(path)).empty());
}

TEST(LegacyNames, AnIncompleteOldLayoutIsNotGuessed) {
  mt::TempDir dir;
  const auto path = (dir.path / "partial.safetensors").string();
  // w0 without the old w1: neither layout is complete; the error names the current name.
  moe::io::save_safetensors(path, {{"child.w0", torch::randn({2, 3})},
                                   {"child.w2", torch::randn({3, 3})},
                                   {"child.c", torch::randn({4})}});
  Parent m;
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*m, path); },
                              {"no tensor 'child.w1'", "different model"}));
  // A shape mismatch under the old layout names the file's (old) tensor.
  moe::io::save_safetensors(path, {{"child.w0", torch::randn({5, 3})},
                                   {"child.w1", torch::randn({3, 3})},
                                   {"child.c", torch::randn({4})}});
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_module(*m, path); },
                              {"tensor 'child.w0' has shape [5, 3]", "[2, 3] in the model"}));
}

}  // namespace
