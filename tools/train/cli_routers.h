// The routers `moe train` knows, one entry each: how to read its keys, build its layer and count
// what it costs. Adding a router to the CLI is one entry in cli_routers.cpp (docs/routers.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/nn/routed_moe.h"
#include "moe/types.h"
#include "train/train_config.h"

namespace moe::cli {
class RunConfig;
}

namespace moe::train {

struct CliRouter {
  std::string name;  ///< the value of moe.router
  /// The moe.* keys it reads beyond num_experts, hidden and activation (for the unknown-key check).
  std::vector<std::string> keys;
  /// Reads and checks its keys into `m` (std::invalid_argument naming the key otherwise).
  void (*parse)(const cli::RunConfig& c, MoESection& m);
  /// Its layer for width d_model; total_steps for schedules over the run.
  nn::RoutedMoE (*build)(const MoESection& m, int64_t d_model, int64_t total_steps);
  /// Experts one token uses on average (the dense width of equal active compute).
  int64_t (*experts_per_token)(const MoESection& m);
  /// The most experts one token may use (memory of the hidden activations).
  double (*most_experts_per_token)(const MoESection& m);
  /// Trainable router parameters for width d (the memory estimate).
  double (*router_parameters)(const MoESection& m, double d);
  /// Frozen parameters of a generated router (HyperRouter's hyper-network), or null.
  double (*frozen_parameters)(const MoESection& m, double d) = nullptr;
};

/// Every router, in the order docs/cli.md lists them.
const std::vector<CliRouter>& cli_routers();

/// The entry called `name`; std::invalid_argument listing the names otherwise.
const CliRouter& cli_router(const std::string& name);

/// moe.activation's value as the enum.
Activation activation_of(const std::string& name);

}  // namespace moe::train
