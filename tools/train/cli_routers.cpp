// The routers of `moe train` (tools/train/cli_routers.h): one entry per router. To add one, write
// its parse and build functions here and add its entry to cli_routers() (docs/routers.md).
#include "train/cli_routers.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cli/run_config.h"
#include "moe/moe.h"
#include "train/config_readers.h"

namespace moe::train {
namespace {

using moe::cli::RunConfig;
using namespace config;

TopKSchedule::Mode schedule_mode(const std::string& s) {
  using M = TopKSchedule::Mode;
  if (s == "linear_increase") return M::kLinearIncrease;
  if (s == "linear_decrease") return M::kLinearDecrease;
  if (s == "cosine_increase") return M::kCosineIncrease;
  if (s == "cosine_decrease") return M::kCosineDecrease;
  if (s == "exp_increase") return M::kExpIncrease;
  if (s == "multistep_increase") return M::kMultiStepIncrease;
  if (s == "multistep_decrease") return M::kMultiStepDecrease;
  return M::kConstant;
}

// Every named layer is a RoutedMoE: the model holds that one type.
template <typename NamedLayer>
nn::RoutedMoE as_routed(const NamedLayer& layer) {
  return nn::RoutedMoE(std::shared_ptr<nn::RoutedMoEImpl>(layer.ptr()));
}

c10::optional<double> optional_coef(double c) {
  return c >= 0 ? c10::optional<double>(c) : c10::nullopt;
}

void parse_top_k(const RunConfig& c, MoESection& m, int64_t default_k) {
  m.top_k = int_at_least(c, "moe.top_k", std::min(default_k, m.num_experts), 1);
  if (m.top_k > m.num_experts)
    bad("moe.top_k", std::to_string(m.top_k),
        "at most moe.num_experts = " + std::to_string(m.num_experts));
}

double top_k_experts(const MoESection& m) {
  return static_cast<double>(std::max(m.top_k, m.k_max));
}
int64_t top_k_per_token(const MoESection& m) { return std::max(m.top_k, m.k_max); }

// ---- softmax_topk, noisy_topk, switch: TopKRouter in SparseMoE ---------------------------------

void parse_sparse(const RunConfig& c, MoESection& m) {
  parse_top_k(c, m, m.router == "switch" ? 1 : 2);
  m.capacity_factor = number_in(c, "moe.capacity_factor", m.capacity_factor, 0, 1e6);
  m.importance_coef = coef(c, "moe.importance_coef");
  m.load_coef = coef(c, "moe.load_coef");
  m.balance_coef = coef(c, "moe.balance_coef");
  m.z_loss_coef = coef(c, "moe.z_loss_coef");
  if (m.router == "noisy_topk") {
    m.noisy_gating = c.get_bool("moe.noisy_gating", m.noisy_gating);
    m.noise_epsilon = number_in(c, "moe.noise_epsilon", m.noise_epsilon, 0, 1e3);
  }
}

nn::RoutedMoE build_sparse(const MoESection& m, int64_t d, int64_t) {
  const RouterKind kind = m.router == "softmax_topk" ? RouterKind::kSoftmaxTopK
                          : m.router == "switch"     ? RouterKind::kSwitch
                                                     : RouterKind::kNoisyTopK;
  return as_routed(nn::SparseMoE(nn::SparseMoEOptions(d, m.num_experts)
                                     .hidden_size(m.hidden)
                                     .top_k(m.top_k)
                                     .router(kind)
                                     .activation(activation_of(m.activation))
                                     .capacity_factor(m.capacity_factor)
                                     .noisy_gating(m.noisy_gating)
                                     .noise_epsilon(m.noise_epsilon)
                                     .importance_coef(optional_coef(m.importance_coef))
                                     .load_coef(optional_coef(m.load_coef))
                                     .balance_coef(optional_coef(m.balance_coef))
                                     .z_loss_coef(optional_coef(m.z_loss_coef))));
}

double sparse_router_parameters(const MoESection& m, double d) {
  const double E = static_cast<double>(m.num_experts);
  return m.router == "noisy_topk" && m.noisy_gating ? 2 * E * d : E * d;
}

// ---- hierarchical: HierarchicalMoE ------------------------------------------------------------

void parse_hierarchical(const RunConfig& c, MoESection& m) {
  m.groups = int_at_least(c, "moe.groups", 0, 0);
  if (m.groups == 0) {  // the largest divisor of E not above sqrt(E)
    int64_t g = static_cast<int64_t>(std::sqrt(static_cast<double>(m.num_experts)));
    while (m.num_experts % g != 0) --g;
    m.groups = g;
  }
  if (m.num_experts % m.groups != 0)
    bad("moe.groups", std::to_string(m.groups),
        "a divisor of moe.num_experts = " + std::to_string(m.num_experts));
  m.top_k = int_at_least(c, "moe.top_k", std::min<int64_t>(2, m.groups), 1);
  if (m.top_k > m.groups)
    bad("moe.top_k", std::to_string(m.top_k),
        "at most moe.groups = " + std::to_string(m.groups) + " (the primary gate's k)");
  m.secondary_top_k =
      int_at_least(c, "moe.secondary_top_k", std::min<int64_t>(2, m.num_experts / m.groups), 1);
  if (m.secondary_top_k > m.num_experts / m.groups)
    bad("moe.secondary_top_k", std::to_string(m.secondary_top_k),
        "at most the experts per group, " + std::to_string(m.num_experts / m.groups));
  m.importance_coef = coef(c, "moe.importance_coef");
  m.load_coef = coef(c, "moe.load_coef");
  m.noisy_gating = c.get_bool("moe.noisy_gating", m.noisy_gating);
  m.noise_epsilon = number_in(c, "moe.noise_epsilon", m.noise_epsilon, 0, 1e3);
}

nn::RoutedMoE build_hierarchical(const MoESection& m, int64_t d, int64_t) {
  auto o = nn::HierarchicalMoEOptions(d, m.groups, m.num_experts / m.groups)
               .hidden_size(m.hidden)
               .activation(activation_of(m.activation))
               .noisy_gating(m.noisy_gating)
               .noise_epsilon(m.noise_epsilon);
  o.primary_top_k(m.top_k).secondary_top_k(m.secondary_top_k);
  if (m.importance_coef >= 0) o.importance_coef(m.importance_coef);
  if (m.load_coef >= 0) o.load_coef(m.load_coef);
  return as_routed(nn::HierarchicalMoE(o));
}

int64_t hierarchical_per_token(const MoESection& m) { return m.top_k * m.secondary_top_k; }
double hierarchical_experts(const MoESection& m) {
  return static_cast<double>(hierarchical_per_token(m));
}
double hierarchical_router_parameters(const MoESection& m, double d) {
  return (m.noisy_gating ? 2 : 1) * d * static_cast<double>(m.groups + m.num_experts);
}

// ---- top_any: DynMoE's TopAnyMoE --------------------------------------------------------------

void parse_top_any(const RunConfig& c, MoESection& m) {
  m.initial_experts =
      int_at_least(c, "moe.initial_experts", std::max<int64_t>(1, m.num_experts / 2), 1);
  if (m.initial_experts > m.num_experts)
    bad("moe.initial_experts", std::to_string(m.initial_experts),
        "at most moe.num_experts = " + std::to_string(m.num_experts) + " (the pool size E_max)");
  m.storage = one_of(c, "moe.storage", m.storage, {"pool", "resize"});
  m.schedule = one_of(c, "moe.schedule", m.schedule, {"window", "every_step", "manual"});
  if (m.schedule == "window") {
    m.record = int_at_least(c, "moe.record", m.record, 1);
    m.period = int_at_least(c, "moe.period", m.period, 2);
    if (m.record >= m.period)
      bad("moe.record", std::to_string(m.record),
          "less than moe.period = " + std::to_string(m.period));
  }
  m.temperature = one_of(c, "moe.temperature", m.temperature, {"frozen", "trainable", "none"});
  m.fallback = one_of(c, "moe.fallback", m.fallback, {"argmax", "argmax_score", "zero"});
  m.top_any_aux_coef = number_in(c, "moe.aux_coef", m.top_any_aux_coef, 0, 1e6);
  m.top_k = 0;  // top-any: every token chooses its own k
}

nn::RoutedMoE build_top_any(const MoESection& m, int64_t d, int64_t) {
  auto o = nn::TopAnyMoEOptions(d, m.num_experts)
               .initial_experts(m.initial_experts)
               .hidden_size(m.hidden)
               .activation(activation_of(m.activation))
               .aux_loss_coef(m.top_any_aux_coef)
               .storage(m.storage == "resize" ? nn::ExpertStorage::kResize
                                              : nn::ExpertStorage::kPoolMask)
               .temperature(m.temperature == "trainable" ? TopAnyTemperature::kTrainable
                            : m.temperature == "none"    ? TopAnyTemperature::kNone
                                                         : TopAnyTemperature::kFrozen)
               .fallback(m.fallback == "zero"           ? TopAnyFallback::kZero
                         : m.fallback == "argmax_score" ? TopAnyFallback::kArgmaxScore
                                                        : TopAnyFallback::kArgmax);
  if (m.schedule == "window")
    o.schedule(nn::ExpertSchedule::window(m.record, m.period));
  else if (m.schedule == "every_step")
    o.schedule(nn::ExpertSchedule::every_step());
  return as_routed(nn::TopAnyMoE(o));
}

int64_t top_any_per_token(const MoESection&) { return 1; }
double top_any_experts(const MoESection& m) { return static_cast<double>(m.num_experts); }
double top_any_router_parameters(const MoESection& m, double d) {
  return static_cast<double>(m.num_experts) * (d + 1);
}

// ---- hyper, smoe_dropout: HyperRouterMoE ------------------------------------------------------

void parse_hyper(const RunConfig& c, MoESection& m) {
  parse_top_k(c, m, 2);
  m.k_schedule =
      one_of(c, "moe.k_schedule", m.k_schedule,
             {"constant", "linear_increase", "linear_decrease", "cosine_increase",
              "cosine_decrease", "exp_increase", "multistep_increase", "multistep_decrease"});
  if (m.k_schedule != "constant") {
    m.k_min = int_at_least(c, "moe.k_min", m.top_k, 1);
    m.k_max = int_at_least(c, "moe.k_max", m.num_experts, 1);
    if (m.k_min > m.k_max || m.k_max > m.num_experts)
      bad("moe.k_min/k_max", std::to_string(m.k_min) + "/" + std::to_string(m.k_max),
          "1 <= k_min <= k_max <= moe.num_experts = " + std::to_string(m.num_experts));
  }
  if (m.router == "hyper") m.hyper_hidden = int_at_least(c, "moe.hyper_hidden", m.hyper_hidden, 1);
  m.balance_coef = coef(c, "moe.balance_coef");
  m.z_loss_coef = coef(c, "moe.z_loss_coef");
}

nn::RoutedMoE build_hyper(const MoESection& m, int64_t d, int64_t total_steps) {
  auto o = nn::HyperRouterMoEOptions(d, m.num_experts)
               .hidden_size(m.hidden)
               .router(m.router == "hyper"          ? nn::HyperRouterKind::kHyper
                       : m.router == "smoe_dropout" ? nn::HyperRouterKind::kFrozenRandom
                                                    : nn::HyperRouterKind::kTrainable)
               .top_k(m.top_k)
               .activation(activation_of(m.activation))
               .hyper_hidden(m.hyper_hidden)
               .balance_coef(std::max(0.0, m.balance_coef))
               .z_loss_coef(std::max(0.0, m.z_loss_coef));
  if (m.k_schedule != "constant")
    o.k_schedule(TopKSchedule(schedule_mode(m.k_schedule), m.k_min, m.k_max, total_steps));
  return as_routed(nn::HyperRouterMoE(o));
}

// The router parameters: HyperRouter trains its embedding only (the hyper-network is frozen,
// counted apart by the memory estimate); the Linear router of SMoE-Dropout (frozen) and of SMoE
// (trained) has weight and bias.
double hyper_router_parameters(const MoESection& m, double d) {
  return m.router == "hyper" ? d : static_cast<double>(m.num_experts) * (d + 1);
}

// The hyper-network: [hyper_hidden, d] + [hyper_hidden] + [E·(d+1), hyper_hidden] + [E·(d+1)].
double hypernetwork_parameters(const MoESection& m, double d) {
  if (m.router != "hyper") return 0;
  const double hh = static_cast<double>(m.hyper_hidden), E = static_cast<double>(m.num_experts);
  return hh * d + hh + E * (d + 1) * hh + E * (d + 1);
}

// ---- expert_choice: ExpertChoiceRouter in a RoutedMoE -----------------------------------------

void parse_expert_choice(const RunConfig& c, MoESection& m) {
  // each expert takes T·cf/E tokens; on average cf per token
  m.capacity_factor = number_in(c, "moe.capacity_factor", 2.0, 0, 1e6);
  if (!(m.capacity_factor > 0))
    bad("moe.capacity_factor", std::to_string(m.capacity_factor),
        "> 0 for expert_choice (the tokens each expert takes: T * capacity_factor / E)");
  m.z_loss_coef = coef(c, "moe.z_loss_coef");
  m.top_k = 0;  // no k: an expert takes tokens, a token gets 0 to E experts
}

nn::RoutedMoE build_expert_choice(const MoESection& m, int64_t d, int64_t) {
  const auto ro = ExpertChoiceRouterOptions(d, m.num_experts)
                      .capacity_factor(m.capacity_factor)
                      .z_loss_coef(std::max(0.0, m.z_loss_coef))
                      .name("ExpertChoiceMoE");
  return nn::RoutedMoE(
      nn::RoutedMoEOptions(
          d, [ro] { return ExpertChoiceRouter(ro).ptr(); },
          ExpertBankOptions(m.num_experts, d, m.hidden).activation(activation_of(m.activation)))
          .name("ExpertChoiceMoE"));
}

int64_t expert_choice_per_token(const MoESection& m) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::llround(m.capacity_factor)));
}
// T·cf pairs in all (each expert takes T·cf/E tokens, rounded up).
double expert_choice_experts(const MoESection& m) { return std::ceil(m.capacity_factor); }
double linear_router_parameters(const MoESection& m, double d) {
  return static_cast<double>(m.num_experts) * d;
}

}  // namespace

Activation activation_of(const std::string& s) {
  if (s == "gelu") return Activation::kGELU;
  if (s == "silu") return Activation::kSiLU;
  if (s == "swiglu") return Activation::kSwiGLU;
  if (s == "geglu") return Activation::kGEGLU;
  return Activation::kReLU;
}

const std::vector<CliRouter>& cli_routers() {
  static const std::vector<std::string> sparse_keys{
      "moe.top_k",        "moe.capacity_factor", "moe.importance_coef", "moe.load_coef",
      "moe.balance_coef", "moe.z_loss_coef",     "moe.noisy_gating",    "moe.noise_epsilon"};
  static const std::vector<std::string> hyper_keys{
      "moe.top_k",        "moe.k_schedule",   "moe.k_min",      "moe.k_max",
      "moe.hyper_hidden", "moe.balance_coef", "moe.z_loss_coef"};
  static const std::vector<CliRouter> routers{
      {"softmax_topk", sparse_keys, parse_sparse, build_sparse, top_k_per_token, top_k_experts,
       sparse_router_parameters},
      {"noisy_topk", sparse_keys, parse_sparse, build_sparse, top_k_per_token, top_k_experts,
       sparse_router_parameters},
      {"switch", sparse_keys, parse_sparse, build_sparse, top_k_per_token, top_k_experts,
       sparse_router_parameters},
      {"hierarchical",
       {"moe.groups", "moe.top_k", "moe.secondary_top_k", "moe.importance_coef", "moe.load_coef",
        "moe.noisy_gating", "moe.noise_epsilon"},
       parse_hierarchical,
       build_hierarchical,
       hierarchical_per_token,
       hierarchical_experts,
       hierarchical_router_parameters},
      {"top_any",
       {"moe.initial_experts", "moe.storage", "moe.schedule", "moe.record", "moe.period",
        "moe.temperature", "moe.fallback", "moe.aux_coef"},
       parse_top_any,
       build_top_any,
       top_any_per_token,
       top_any_experts,
       top_any_router_parameters},
      {"hyper", hyper_keys, parse_hyper, build_hyper, top_k_per_token, top_k_experts,
       hyper_router_parameters, hypernetwork_parameters},
      {"smoe_dropout", hyper_keys, parse_hyper, build_hyper, top_k_per_token, top_k_experts,
       hyper_router_parameters},
      {"smoe", hyper_keys, parse_hyper, build_hyper, top_k_per_token, top_k_experts,
       hyper_router_parameters},
      {"expert_choice",
       {"moe.capacity_factor", "moe.z_loss_coef"},
       parse_expert_choice,
       build_expert_choice,
       expert_choice_per_token,
       expert_choice_experts,
       linear_router_parameters},
  };
  return routers;
}

const CliRouter& cli_router(const std::string& name) {
  std::string names;
  for (const auto& r : cli_routers()) {
    if (r.name == name) return r;
    names += (names.empty() ? "" : ", ") + r.name;
  }
  throw std::invalid_argument("config: moe.router = '" + name + "': expected one of " + names);
}

}  // namespace moe::train
