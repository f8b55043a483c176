// Checkpoints and legacy parameter names (include/moe/io/checkpoint.h, io::LegacyNames): a module
// that declares the names an earlier version saved loads files written with them, through the
// whole map or not at all; the multi-task models' names (include/moe/nn/multitask.h) and the
// checkpoints written before they changed (tests/fixtures/multitask_v1).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/cloneable.h>

#include <map>
#include <set>
#include <string>

#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "moe/nn/multitask.h"
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

// The names of the header: expert layers from 1, MLP layers counting Linear layers only.
TEST(MultiTaskCheckpoints, ParameterNamesFollowTheHeader) {
  using moe::nn::TaskGateOptions;
  moe::nn::MMoE m(moe::nn::MMoEOptions(5, 3, 1).expert_hidden({6, 4}).tower_hidden({3, 2}).gate(
      TaskGateOptions().hidden({4, 3}).bias(true)));
  std::set<std::string> names;
  for (const auto& p : m->named_parameters()) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{
                       "experts.w1", "experts.b1", "experts.w2", "experts.b2", "gates.0.weight",
                       "gates.0.bias", "gates.0.hidden.0.weight", "gates.0.hidden.0.bias",
                       "gates.0.hidden.1.weight", "gates.0.hidden.1.bias", "towers.0.0.weight",
                       "towers.0.0.bias", "towers.0.1.weight", "towers.0.1.bias",
                       "towers.0.2.weight", "towers.0.2.bias"}));
  EXPECT_EQ(m->named_parameters()["experts.w1"].sizes(), (std::vector<int64_t>{3, 5, 6}));
  EXPECT_EQ(m->named_parameters()["towers.0.1.weight"].sizes(), (std::vector<int64_t>{2, 3}));
  moe::nn::SharedBottom s(moe::nn::SharedBottomOptions(5, 1).bottom_hidden({6, 4}));
  EXPECT_TRUE(s->named_parameters().contains("bottom.1.weight"));
  moe::nn::PLE p(moe::nn::PLEOptions(5, 2).levels(2).expert_hidden({4}));
  EXPECT_TRUE(p->named_parameters().contains("levels.1.task_experts.1.w1"));
  EXPECT_TRUE(p->named_parameters().contains("levels.0.shared_experts.b1"));
}

// Loads tests/fixtures/multitask_v1/<name>.safetensors (written with the names of 363b33d:
// experts.w0, towers.0.2, ...) into `model`, built as tests/fixtures/make_multitask_checkpoints.cpp
// built it, and checks the eval outputs against the ones that code computed; then saves with
// today's names and checks that those load by their own names with the same outputs.
template <typename Model>
void check_v1_fixture(const std::string& name, Model model) {
  SCOPED_TRACE(name);
  const std::string dir = std::string(MOE_TEST_FIXTURES) + "/multitask_v1/";
  const auto file = moe::io::load_safetensors(dir + name + ".safetensors");
  EXPECT_FALSE(moe::io::legacy_sources(*model, file).empty());
  moe::io::load_module(*model, dir + name + ".safetensors");
  model->eval();
  const auto io = moe::io::load_safetensors(dir + name + ".io.safetensors");
  const auto x = io.find("x");
  const auto out = model->forward(x);
  ASSERT_EQ(out.outputs.size(), 2u);
  for (size_t k = 0; k < out.outputs.size(); ++k) {
    // The experts now run on the engine: the same products, summed in another order.
    EXPECT_CLOSE(out.outputs[k], io.find("y" + std::to_string(k)), 1e-5, 1e-6) << "task " << k;
  }
  mt::TempDir tmp;
  const auto path = (tmp.path / "today.safetensors").string();
  moe::io::save_module(*model, path);
  EXPECT_TRUE(moe::io::legacy_sources(*model, moe::io::load_safetensors(path)).empty());
  auto fresh = std::dynamic_pointer_cast<typename Model::ContainedType>(model->clone());
  {
    torch::NoGradGuard g;
    for (auto& p : fresh->parameters()) p.zero_();
  }
  moe::io::load_module(*fresh, path);
  fresh->eval();
  const auto again = fresh->forward(x);
  for (size_t k = 0; k < out.outputs.size(); ++k)
    EXPECT_TRUE(mt::bitwise_equal(again.outputs[k], out.outputs[k])) << "task " << k;
}

TEST(MultiTaskCheckpoints, Version1FilesLoadThroughTheLegacyNames) {
  using namespace moe::nn;
  check_v1_fixture("mmoe",
                   MMoE(MMoEOptions(5, 3, 2).expert_hidden({6, 4}).tower_hidden({3, 2}).gate(
                       TaskGateOptions().hidden({4, 3}).bias(true))));
  check_v1_fixture(
      "omoe_top2",
      MMoE(MMoEOptions(5, 4, 2).expert_hidden({6}).towers({{3}, {}}).one_gate(true).gate(
          TaskGateOptions().top_k(2))));
  check_v1_fixture("ple", PLE(PLEOptions(5, 2)
                                  .levels(2)
                                  .specific_experts(2)
                                  .shared_experts(1)
                                  .expert_hidden({6, 4})
                                  .tower_hidden({3})));
  check_v1_fixture("shared_bottom",
                   SharedBottom(SharedBottomOptions(5, 2).bottom_hidden({6, 4}).tower_hidden({3})));
}

}  // namespace
