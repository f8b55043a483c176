// moe_python_parity: the C++ side of python/tests/test_parity.py. Builds the layer named by its
// first argument with the options the test gives its Python twin (kConfigs below and CONFIGS in
// test_parity.py), in float64 and eval mode, loads the weights the Python layer saved, runs the
// input and saves the outputs; then saves its own layer, for the Python side to load.
//
//   moe_python_parity <config> <weights.safetensors> <input.safetensors> <out.safetensors>
//                     <saved_weights.safetensors>
#include <torch/torch.h>

#include <functional>
#include <iostream>
#include <map>

#include "moe/moe.h"

namespace {

using namespace moe;
using namespace moe::nn;

struct Layer {
  std::shared_ptr<torch::nn::Module> module;
  std::function<std::vector<std::pair<std::string, torch::Tensor>>(const torch::Tensor&)> run;
};

template <typename L>
Layer routed(L layer) {
  return {layer.ptr(), [layer](const torch::Tensor& x) mutable {
            const auto out = layer->forward(x);
            return std::vector<std::pair<std::string, torch::Tensor>>{{"output", out.output},
                                                                      {"aux_loss", out.aux_loss}};
          }};
}

template <typename L>
Layer multitask(L layer) {
  return {layer.ptr(), [layer](const torch::Tensor& x) mutable {
            const auto out = layer->forward(x);
            std::vector<std::pair<std::string, torch::Tensor>> r{{"aux_loss", out.aux_loss}};
            for (size_t k = 0; k < out.outputs.size(); ++k)
              r.emplace_back("output" + std::to_string(k), out.outputs[k]);
            return r;
          }};
}

const std::map<std::string, std::function<Layer()>> kConfigs{
    {"sparse",
     [] {
       return routed(SparseMoE(SparseMoEOptions(8, 4)
                                   .router(RouterKind::kNoisyTopK)
                                   .top_k(2)
                                   .hidden_size(6)
                                   .activation(Activation::kSwiGLU)
                                   .expert_bias(true)
                                   .aux_loss_in_eval(true)));
     }},
    {"hierarchical",
     [] {
       return routed(
           HierarchicalMoE(HierarchicalMoEOptions(8, 2, 3).hidden_size(6).aux_loss_in_eval(true)));
     }},
    {"top_any", [] { return routed(TopAnyMoE(TopAnyMoEOptions(8, 4).hidden_size(6))); }},
    {"hyper",
     [] {
       return routed(
           HyperRouterMoE(HyperRouterMoEOptions(8, 4).hidden_size(6).hyper_hidden(5).top_k(2)));
     }},
    {"gshard",
     [] {
       return routed(GShardMoE(
           GShardMoEOptions(8, {4}).hidden_size(6).second_policy_eval(SecondPolicy::kAll)));
     }},
    {"gshard2",
     [] {
       return routed(GShardMoE(GShardMoEOptions(8, {2, 2}).hidden_size(6).second_policy_eval(
           SecondPolicy::kThreshold)));
     }},
    {"mmoe",
     [] {
       TaskGateOptions gate;
       gate.top_k(2);
       return multitask(MMoE(MMoEOptions(8, 3, 2).gate(gate)));
     }},
    {"ple", [] { return multitask(PLE(PLEOptions(8, 2).levels(2))); }},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6 || kConfigs.count(argv[1]) == 0) {
    std::cerr << "usage: moe_python_parity <config> <weights> <input> <out> <saved>; configs:";
    for (const auto& [name, _] : kConfigs) std::cerr << " " << name;
    std::cerr << "\n";
    return 2;
  }
  try {
    auto layer = kConfigs.at(argv[1])();
    layer.module->to(torch::kDouble);
    layer.module->eval();
    io::load_module(*layer.module, argv[2]);
    const auto input = io::load_safetensors(argv[3]).find("x");
    torch::NoGradGuard no_grad;
    io::save_safetensors(argv[4], layer.run(input));
    io::save_module(*layer.module, argv[5]);
  } catch (const std::exception& e) {
    std::cerr << "moe_python_parity: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
