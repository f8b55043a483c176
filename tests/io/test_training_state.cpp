// Training checkpoints (include/moe/io/training_state.h): stop after some steps, load into freshly
// built objects, continue: the losses equal those of the uninterrupted run bit for bit (the noisy
// router and the batch sampling draw from the restored RNG). Also for a TopAnyMoE whose expert
// count changed, for a file written before a module renamed its tensors, and the errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "moe/io/training_state.h"
#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"
#include "nn/optimizer_state.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    in = register_module("in", torch::nn::Linear(6, 8));
    moe = register_module("moe",
                          moe::nn::SparseMoE(moe::nn::SparseMoEOptions(8, 4).hidden_size(5).router(
                              moe::RouterKind::kNoisyTopK)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto o = moe->forward(torch::relu(in(x)));
    return o.output.pow(2).mean() + o.aux_loss;
  }
  torch::nn::Linear in{nullptr};
  moe::nn::SparseMoE moe{nullptr};
};
TORCH_MODULE(Net);

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / (name + std::to_string(::getpid()) + ".safetensors"))
      .string();
}

// One step on a batch drawn from the global RNG.
double step(Net& net, torch::optim::Optimizer& opt, const torch::Tensor& data) {
  const auto idx = torch::randint(data.size(0), {16}, at::kLong);
  opt.zero_grad();
  auto loss = net->forward(data.index_select(0, idx));
  loss.backward();
  opt.step();
  return loss.item<double>();
}

TEST(TrainingCheckpoint, ResumeIsBitExact) {
  const auto data = torch::randn({200, 6});
  const auto path = temp_path("moe_resume_");
  std::vector<double> full, resumed;
  {
    torch::manual_seed(1);
    Net net;
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
    for (int s = 0; s < 10; ++s) {
      if (s == 5) moe::io::save_checkpoint(*net, opt, path, {{"step", "5"}});
      full.push_back(step(net, opt, data));
    }
  }
  torch::manual_seed(99);  // other weights and another RNG state: the file must restore both
  Net net;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.5));
  const auto meta = moe::io::load_checkpoint(*net, opt, path);
  EXPECT_EQ(meta.at("step"), "5");
  EXPECT_EQ(meta.count("moe.optimizer"), 0u);
  EXPECT_EQ(opt.param_groups()[0].options().get_lr(), 1e-2);
  for (int s = 5; s < 10; ++s) resumed.push_back(step(net, opt, data));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(resumed[i], full[5 + i]) << "step " << 5 + i;
  fs::remove(path);
}

TEST(TrainingCheckpoint, TopAnyMoEAfterAResizeResumesBitExactly) {
  using moe::nn::ExpertStorage;
  using moe::nn::TopAnyMoE;
  using moe::nn::TopAnyMoEOptions;
  const auto path = temp_path("moe_resume_topany_");
  const auto x = torch::randn({32, 6});
  auto train = [&](TopAnyMoE& l, torch::optim::Optimizer& o) {
    o.zero_grad();
    auto out = l->forward(x);
    auto loss = out.output.pow(2).mean() + out.aux_loss;
    loss.backward();
    o.step();
    return loss.item<double>();
  };
  auto options =
      TopAnyMoEOptions(6, 8).initial_experts(4).hidden_size(5).storage(ExpertStorage::kResize);
  torch::manual_seed(2);
  TopAnyMoE a(options);
  torch::optim::Adam oa(a->parameters(), torch::optim::AdamOptions(1e-2));
  train(a, oa);
  moe::nn::RoutingRecords rec;
  rec.expert_counts = torch::tensor({3, 0, 1, 2}, at::kLong);
  rec.unrouted_sum = torch::ones({6});
  a->update_experts(rec, &oa);  // 4 -> 3 + 1 experts, moments carried
  train(a, oa);
  moe::io::save_checkpoint(*a, oa, path);
  std::vector<double> full;
  for (int i = 0; i < 3; ++i) full.push_back(train(a, oa));

  torch::manual_seed(3);
  TopAnyMoE b(options.initial_experts(2));
  torch::optim::Adam ob(b->parameters(), torch::optim::AdamOptions(1e-2));
  moe::io::load_checkpoint(*b, ob, path);
  EXPECT_EQ(b->num_experts(), 4);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(train(b, ob), full[i]) << i;
  fs::remove(path);
}

TEST(TrainingCheckpoint, MismatchesAreErrorsThatChangeNothing) {
  const auto path = temp_path("moe_ckpt_err_");
  torch::manual_seed(4);
  Net net;
  torch::optim::Adam adam(net->parameters(), torch::optim::AdamOptions(1e-3));
  moe::io::save_checkpoint(*net, adam, path);
  torch::manual_seed(5);
  Net other;
  const auto w = other->in->weight.clone();
  torch::optim::SGD sgd(other->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*other, sgd, path); },
                              {"holds adam state", "sgd"}));
  EXPECT_TRUE(torch::equal(other->in->weight, w));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_checkpoint(*net, adam, path, {{"moe.step", "1"}});
      },
      {"reserved"}));
  moe::io::save_module(*net, path);  // a plain module file has no training state
  torch::optim::Adam adam2(other->parameters(), torch::optim::AdamOptions(1e-3));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*other, adam2, path); },
                              {"no optimizer state"}));
  fs::remove(path);
}

// Everything a load may change: every parameter and buffer, the optimizer's state and learning
// rates, the CPU generator's state.
struct Snapshot {
  std::vector<torch::Tensor> tensors;
  std::vector<double> lrs;
  torch::Tensor rng;

  Snapshot(Net& net, torch::optim::Adam& opt) {
    for (const auto& t : net->parameters()) tensors.push_back(t.detach().clone());
    for (const auto& t : net->buffers()) tensors.push_back(t.clone());
    for (const auto& p : net->parameters()) {
      auto* state = moe::detail::find_param_state(opt, p);
      if (state == nullptr) {
        tensors.emplace_back();
        continue;
      }
      const auto& st = dynamic_cast<const torch::optim::AdamParamState&>(*state);
      tensors.push_back(torch::tensor({st.step()}, at::kLong));
      tensors.push_back(st.exp_avg().clone());
      tensors.push_back(st.exp_avg_sq().clone());
    }
    for (const auto& g : opt.param_groups()) lrs.push_back(g.options().get_lr());
    rng = at::detail::getDefaultCPUGenerator().get_state();
  }

  ::testing::AssertionResult same_as(const Snapshot& o) const {
    if (tensors.size() != o.tensors.size() || lrs != o.lrs)
      return ::testing::AssertionFailure() << "the optimizer state or learning rates changed";
    for (size_t i = 0; i < tensors.size(); ++i)
      if (tensors[i].defined() != o.tensors[i].defined() ||
          (tensors[i].defined() && !mt::bitwise_equal(tensors[i], o.tensors[i])))
        return ::testing::AssertionFailure() << "tensor " << i << " changed";
    if (!mt::bitwise_equal(rng, o.rng)) return ::testing::AssertionFailure() << "the RNG changed";
    return ::testing::AssertionSuccess();
  }
};

// A copy of a checkpoint with its metadata and tensors edited.
void rewrite(const std::string& from, const std::string& to,
             const std::function<void(std::map<std::string, std::string>&,
                                      std::vector<std::pair<std::string, torch::Tensor>>&)>& edit) {
  auto f = moe::io::load_safetensors(from);
  edit(f.metadata, f.tensors);
  moe::io::save_safetensors(to, f.tensors, f.metadata);
}

void set_tensor(std::vector<std::pair<std::string, torch::Tensor>>& ts, const std::string& name,
                const torch::Tensor& t) {
  for (auto& [n, v] : ts)
    if (n == name) {
      v = t;
      return;
    }
  ts.emplace_back(name, t);
}

void drop_tensor(std::vector<std::pair<std::string, torch::Tensor>>& ts, const std::string& name) {
  for (auto it = ts.begin(); it != ts.end(); ++it)
    if (it->first == name) {
      ts.erase(it);
      return;
    }
}

// A load that fails on any bad metadata value, optimizer state or RNG state leaves the model, the
// optimizer and the RNG bitwise as they were, and its error names the file, the key and the value.
TEST(TrainingCheckpoint, FailedLoadsChangeNothing) {
  using Meta = std::map<std::string, std::string>;
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;
  const auto data = torch::randn({50, 6});
  const auto good = temp_path("moe_ckpt_good_"), bad = temp_path("moe_ckpt_bad_");
  {
    torch::manual_seed(6);
    Net net;
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
    step(net, opt, data);
    moe::io::save_checkpoint(*net, opt, good, {{"step", "1"}});
  }
  torch::manual_seed(7);  // another model with its own optimizer state
  Net net;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(3e-3));
  step(net, opt, data);
  step(net, opt, data);
  auto rng_with = [](int64_t offset, int32_t value) {
    auto s = at::detail::getDefaultCPUGenerator().get_state();
    std::memcpy(s.data_ptr<uint8_t>() + offset, &value, 4);
    return s;
  };
  struct Case {
    std::function<void(Meta&, Tensors&)> edit;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = "abc"; }, {"moe.lr.0", "'abc'", "finite"}},
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = "-0.5"; }, {"moe.lr.0", "'-0.5'", ">= 0"}},
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = "nan"; }, {"moe.lr.0", "'nan'"}},
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = "inf"; }, {"moe.lr.0", "'inf'"}},
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = "0.01x"; }, {"moe.lr.0", "'0.01x'"}},
      {[](Meta& m, Tensors&) { m["moe.lr.0"] = " 0.01"; }, {"moe.lr.0", "' 0.01'"}},
      {[](Meta& m, Tensors&) { m.erase("moe.lr.0"); }, {"moe.lr.0", "no learning rate"}},
      {[](Meta& m, Tensors&) { m["moe.lr.1"] = "0.1"; },
       {"moe.lr.1", "'0.1'", "1 parameter group"}},
      {[](Meta& m, Tensors&) { m["moe.lr.00"] = "0.1"; }, {"moe.lr.00", "'0.1'"}},
      {[](Meta& m, Tensors&) { m["moe.seed"] = "3"; }, {"moe.seed", "'3'", "does not know"}},
      {[&](Meta&, Tensors& t) { set_tensor(t, "rng.cpu", rng_with(0, 0).view(at::kChar)); },
       {"rng.cpu", "Char", "Byte"}},
      {[](Meta&, Tensors& t) { set_tensor(t, "rng.cpu", torch::zeros({8}, at::kByte)); },
       {"rng.cpu", "[8]", "Byte"}},
      {[&](Meta&, Tensors& t) { set_tensor(t, "rng.cpu", rng_with(8, 0)); },  // left = 0
       {"rng.cpu", "not a valid CPU generator state"}},
      {[](Meta&, Tensors& t) { drop_tensor(t, "rng.cpu"); }, {"rng.cpu"}},
      {[](Meta&, Tensors& t) { set_tensor(t, "optim.in.weight.step", torch::tensor({-1L})); },
       {"optim.in.weight.step", "-1", ">= 0"}},
      {[](Meta&, Tensors& t) { set_tensor(t, "optim.in.weight.step", torch::tensor({1.0})); },
       {"optim.in.weight.step", "Float", "int64"}},
      {[](Meta&, Tensors& t) { drop_tensor(t, "optim.in.weight.exp_avg_sq"); },
       {"in.weight", "incomplete", "exp_avg_sq"}},
      {[](Meta&, Tensors& t) {
         set_tensor(t, "optim.in.weight.exp_avg", torch::zeros({2, 6}));
       },
       {"optim.in.weight.exp_avg", "[2, 6]", "[8, 6]"}},
      {[](Meta&, Tensors& t) {
         set_tensor(t, "optim.in.weight.momentum_buffer", torch::zeros({8, 6}));
       },
       {"optim.in.weight.momentum_buffer", "adam"}},
      {[](Meta&, Tensors& t) { set_tensor(t, "extra", torch::zeros({1})); }, {"'extra'"}},
      {[](Meta&, Tensors& t) { set_tensor(t, "model.in.bias", torch::zeros({3})); },
       {"model.in.bias", "[3]", "[8]"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    rewrite(good, bad, cases[i].edit);
    const Snapshot before(net, opt);
    auto expect = cases[i].expect;
    expect.push_back(bad);
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*net, opt, bad); }, expect))
        << "case " << i;
    EXPECT_TRUE(Snapshot(net, opt).same_as(before)) << "case " << i;
  }
  EXPECT_EQ(moe::io::load_checkpoint(*net, opt, good).at("step"), "1");  // the good file loads
  fs::remove(good);
  fs::remove(bad);
}

// A load makes the optimizer's state the file's: a parameter without state in the file loses the
// state it had, as in the freshly built optimizer the checkpoint continues.
TEST(TrainingCheckpoint, ALoadReplacesStaleOptimizerState) {
  const auto path = temp_path("moe_ckpt_fresh_");
  torch::manual_seed(8);
  Net net;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  moe::io::save_checkpoint(*net, opt, path);  // before any step: no state
  step(net, opt, torch::randn({20, 6}));
  ASSERT_FALSE(opt.state().empty());
  moe::io::load_checkpoint(*net, opt, path);
  EXPECT_TRUE(opt.state().empty());
  fs::remove(path);
}

// A module that renamed its tensors (io::LegacyNames, include/moe/io/checkpoint.h) in a chain, as
// the multi-task experts did (README.md, changelog): the old w0 is w1 now, the old w1 is w2.
struct RenamedImpl : torch::nn::Module, moe::io::LegacyNames {
  RenamedImpl() {
    w1 = register_parameter("w1", torch::randn({6, 4}) * 0.5);
    w2 = register_parameter("w2", torch::randn({4, 3}) * 0.5);
    c = register_parameter("c", torch::zeros({3}));
  }
  std::map<std::string, std::string> legacy_names() const override {
    return {{"w0", "w1"}, {"w1", "w2"}};
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return (torch::tanh(x.mm(w1)).mm(w2) + c).pow(2).mean();
  }
  torch::Tensor w1, w2, c;
};
TORCH_MODULE(Renamed);

double renamed_step(Renamed& m, torch::optim::Optimizer& opt, const torch::Tensor& data) {
  const auto idx = torch::randint(data.size(0), {8}, at::kLong);
  opt.zero_grad();
  auto loss = m->forward(data.index_select(0, idx));
  loss.backward();
  opt.step();
  return loss.item<double>();
}

// `path`'s tensors under the names the module had before: model.w1 -> model.w0, model.w2 ->
// model.w1, and their optimizer state optim.w1.* -> optim.w0.*, optim.w2.* -> optim.w1.*, as a
// training run of the earlier version saved them.
void rename_to_legacy(const std::string& from, const std::string& to) {
  rewrite(from, to,
          [](std::map<std::string, std::string>&,
             std::vector<std::pair<std::string, torch::Tensor>>& ts) {
            for (auto& [n, t] : ts) {
              for (const std::string area : {"model.", "optim."}) {
                if (n.compare(0, area.size() + 2, area + "w1") == 0)
                  n = area + "w0" + n.substr(area.size() + 2);
                else if (n.compare(0, area.size() + 2, area + "w2") == 0)
                  n = area + "w1" + n.substr(area.size() + 2);
              }
            }
          });
}

// A checkpoint whose model was saved under legacy names keeps its optimizer state under the same
// names: load_checkpoint reads each parameter's state from where its tensor came from, and the
// continued training equals the uninterrupted one bit for bit (the state of the old w1, shaped as
// the new w2, is not taken for the new w1).
TEST(TrainingCheckpoint, StateUnderLegacyNamesFollowsItsParameter) {
  const auto data = torch::randn({64, 6});
  const auto saved = temp_path("moe_ckpt_renamed_"), old = temp_path("moe_ckpt_legacy_");
  std::vector<double> full;
  {
    torch::manual_seed(11);
    Renamed m;
    torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(1e-2).amsgrad(true));
    for (int s = 0; s < 8; ++s) {
      if (s == 4) moe::io::save_checkpoint(*m, opt, saved, {{"step", "4"}});
      const double loss = renamed_step(m, opt, data);
      if (s >= 4) full.push_back(loss);
    }
  }
  rename_to_legacy(saved, old);
  ASSERT_TRUE(moe::io::load_safetensors(old).find("optim.w0.max_exp_avg_sq").defined());
  torch::manual_seed(12);
  Renamed m;
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(0.5).amsgrad(true));
  EXPECT_EQ(moe::io::legacy_sources(*m, moe::io::load_safetensors(old), "model."),
            (std::map<std::string, std::string>{{"w1", "model.w0"}, {"w2", "model.w1"}}));
  EXPECT_EQ(moe::io::load_checkpoint(*m, opt, old).at("step"), "4");
  const auto reference = moe::io::load_safetensors(saved);
  for (const auto& item : m->named_parameters()) {
    const auto& name = item.key();
    const auto& st = dynamic_cast<const torch::optim::AdamWParamState&>(
        *moe::detail::find_param_state(opt, item.value()));
    EXPECT_EQ(st.step(), 4) << name;
    EXPECT_TRUE(mt::bitwise_equal(st.exp_avg(), reference.find("optim." + name + ".exp_avg")))
        << name;
    EXPECT_TRUE(
        mt::bitwise_equal(st.max_exp_avg_sq(), reference.find("optim." + name + ".max_exp_avg_sq")))
        << name;
  }
  for (int s = 4; s < 8; ++s) EXPECT_EQ(renamed_step(m, opt, data), full[s - 4]) << "step " << s;

  // The checks read the old names too, and their errors name the file's tensors.
  torch::manual_seed(13);
  Renamed fresh;
  torch::optim::AdamW fresh_opt(fresh->parameters(), torch::optim::AdamWOptions(1e-2));
  const auto bad = temp_path("moe_ckpt_legacy_bad_");
  using Meta = std::map<std::string, std::string>;
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;
  const std::vector<std::pair<std::function<void(Meta&, Tensors&)>, std::vector<std::string>>>
      cases = {
          {[](Meta&, Tensors& t) {
             set_tensor(t, "optim.w0.exp_avg", torch::zeros({4, 3}));
           },
           {"optim.w0.exp_avg", "[4, 3]", "[6, 4]"}},
          {[](Meta&, Tensors& t) { drop_tensor(t, "optim.w1.exp_avg_sq"); },
           {"parameter w2", "incomplete", "exp_avg_sq"}},
          {[](Meta&, Tensors& t) { set_tensor(t, "optim.w2.step", torch::tensor({1L})); },
           {"optim.w2.step", "does not have"}},
          {[](Meta&, Tensors& t) { set_tensor(t, "optim.w0.step", torch::tensor({-2L})); },
           {"optim.w0.step", "-2", ">= 0"}},
      };
  const auto w1 = fresh->w1.detach().clone();
  for (size_t i = 0; i < cases.size(); ++i) {
    rewrite(old, bad, cases[i].first);
    auto expect = cases[i].second;
    expect.push_back(bad);
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_checkpoint(*fresh, fresh_opt, bad); }, expect))
        << "case " << i;
    EXPECT_TRUE(mt::bitwise_equal(fresh->w1, w1)) << "case " << i;
    EXPECT_TRUE(fresh_opt.state().empty()) << "case " << i;
  }
  // Saved again, the checkpoint uses the current names only.
  moe::io::save_checkpoint(*m, opt, bad);
  const auto again = moe::io::load_safetensors(bad);
  EXPECT_TRUE(again.find("optim.w2.exp_avg").defined());
  EXPECT_FALSE(again.find("optim.w0.exp_avg").defined());
  EXPECT_TRUE(moe::io::legacy_sources(*m, again, "model.").empty());
  fs::remove(saved);
  fs::remove(old);
  fs::remove(bad);
}

TEST(TrainingCheckpoint, MetadataReadersNameTheKeyTheValueAndTheExpectation) {
  const std::map<std::string, std::string> m = {
      {"n", "12"}, {"neg", "-3"}, {"x", "2.5"}, {"bad", "1e"}, {"big", "99999999999999999999"}};
  EXPECT_EQ(moe::io::metadata_int(m, "n", 0, 100, "f"), 12);
  EXPECT_EQ(moe::io::metadata_double(m, "x", 0, INFINITY, "f"), 2.5);
  EXPECT_TRUE(mt::throws_with([&] { moe::io::metadata_int(m, "neg", 0, 100, "here: f"); },
                              {"here: f", "neg", "'-3'", "integer in [0, 100]"}));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::metadata_int(m, "x", 0, 100, "f"); }, {"x", "'2.5'"}));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::metadata_int(m, "big", 0, INT64_MAX, "f"); },
                              {"big", "'99999999999999999999'"}));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::metadata_double(m, "bad", 0, 1, "f"); },
                              {"bad", "'1e'", "finite number in [0, 1]"}));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::metadata_int(m, "missing", 0, 1, "f"); },
                              {"f has no metadata missing"}));
}

}  // namespace
