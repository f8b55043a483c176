// The synthetic multi-task experiment (tools/experiments/multitask_synthetic.h).
#include "experiments/multitask_synthetic.h"

#include <torch/torch.h>

#include "moe/data/mmoe_synthetic.h"
#include "moe/multitask_loss.h"
#include "moe/nn/multitask.h"
#include "train/trainer.h"

namespace moe::experiments {
namespace {

// Budgets close to the MMoE paper's: 8 experts of 16 units (MMoE/OMoE), a bottom of 113 units
// (Shared-Bottom), towers of 8 units for every model.
std::shared_ptr<torch::nn::Module> build(
    const std::string& model, int64_t d,
    std::function<MultiTaskOutput(const torch::Tensor&)>* fwd) {
  if (model == "Shared-Bottom") {
    nn::SharedBottom m(nn::SharedBottomOptions(d, 2).bottom_hidden({113}).tower_hidden({8}));
    *fwd = [m](const torch::Tensor& x) mutable { return m->forward(x); };
    return m.ptr();
  }
  if (model == "OMoE" || model == "MMoE") {
    nn::MMoE m(
        nn::MMoEOptions(d, 8, 2).expert_hidden({16}).tower_hidden({8}).one_gate(model == "OMoE"));
    *fwd = [m](const torch::Tensor& x) mutable { return m->forward(x); };
    return m.ptr();
  }
  if (model == "CGC" || model == "PLE") {
    // CGC: one level of 3 experts per task + 2 shared (8 experts); PLE: 2 levels of 2 per task + 2
    // shared (6 experts each).
    const bool cgc = model == "CGC";
    nn::PLE m(nn::PLEOptions(d, 2)
                  .levels(cgc ? 1 : 2)
                  .specific_experts(cgc ? 3 : 2)
                  .shared_experts(2)
                  .expert_hidden({16})
                  .tower_hidden({8}));
    *fwd = [m](const torch::Tensor& x) mutable { return m->forward(x); };
    return m.ptr();
  }
  TORCH_CHECK_VALUE(false, "multitask experiment: unknown model '", model, "'");
}

}  // namespace

const std::vector<std::string>& multitask_models() {
  static const std::vector<std::string> m = {"Shared-Bottom", "OMoE", "MMoE", "CGC", "PLE"};
  return m;
}

MultitaskRun run_multitask(const MultitaskConfig& c, const std::string& model, double p,
                           uint64_t seed) {
  const data::MMoESynthetic gen(data::MMoESyntheticOptions().dim(c.dim).correlation(p).seed(seed));
  const auto train = gen.sample(c.train_size, 1000 + seed);
  const auto test = gen.sample(c.test_size, 2000 + seed);
  torch::manual_seed(seed);
  std::function<MultiTaskOutput(const torch::Tensor&)> forward;
  auto module = build(model, c.dim, &forward);
  torch::optim::Adam opt(module->parameters(), torch::optim::AdamOptions(c.lr));
  const MultiTaskLoss loss({{TaskType::kRegression, TaskType::kRegression}, {}, {}});
  train::EpochBatches batches(c.train_size, c.batch);
  train::HookFunctions hooks;
  hooks.batch_forward = [&](int64_t step) {
    const auto idx = batches.indices(step);
    const auto out = forward(train.x.index_select(0, idx));
    return train::StepLoss{loss(out.outputs, train.y.index_select(0, idx), {}, batches.epoch(step)),
                           out.aux_loss};
  };
  train::TrainerOptions options;
  options.steps = c.epochs * batches.steps_per_epoch();
  train::Trainer(*module, opt, options).run(hooks);
  module->eval();
  torch::NoGradGuard no_grad;
  const auto out = forward(test.x);
  MultitaskRun r;
  r.model = model;
  r.correlation = p;
  r.seed = seed;
  r.label_pearson = pearson(train.y.select(1, 0), train.y.select(1, 1));
  for (const auto& t : module->parameters()) r.parameters += t.numel();
  for (int k = 0; k < 2; ++k) {
    r.test_mse[k] = masked_mse(out.outputs[k], test.y.select(1, k));
    r.test_nmse[k] = r.test_mse[k] / test.y.select(1, k).var().item<double>();
  }
  return r;
}

}  // namespace moe::experiments
