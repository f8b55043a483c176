// The statistics of a logging interval and of the session (tools/train/interval_stats.h).
#include "train/interval_stats.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

namespace moe::train {

using json = nlohmann::json;

void LayerAccumulator::add(const LayerProbe& p, int64_t batch_tokens) {
  const auto c = (p.gate_mass.defined() ? p.gate_mass : p.stats.tokens_per_expert)
                     .to(torch::kDouble)
                     .reshape({-1});
  sparse = !p.gate_mass.defined();
  // DynMoE's resize mode changes E: start over, the old indices mean other experts now
  if (!counts.defined() || counts.numel() != c.numel()) {
    *this = LayerAccumulator(name);
    counts = torch::zeros_like(c);
  }
  counts += c;
  ++forwards;
  tokens += batch_tokens;
  if (sparse) {
    cv += p.stats.cv_load();
    cv_importance += p.stats.cv_importance();
    dropped += p.stats.dropped_fraction();
    mean_k += p.stats.experts_per_token_mean();
    unrouted_tokens += p.stats.tokens_without_expert();
    active = p.stats.active_experts();
  }
}

metrics::LayerRecord LayerAccumulator::record() const {
  metrics::LayerRecord r;
  r.name = name;
  const double total = counts.sum().item<double>();
  r.share.assign(counts.data_ptr<double>(), counts.data_ptr<double>() + counts.numel());
  for (auto& s : r.share) s = total > 0 ? s / total : 0;
  if (sparse && forwards > 0) {
    r.cv = cv / forwards;
    r.cv_importance = cv_importance / forwards;
    r.dropped = dropped / forwards;
    r.mean_k = mean_k / forwards;
    r.active_experts = static_cast<double>(active);
    r.unrouted = tokens > 0 ? unrouted_tokens / tokens : 0.0;
  } else if (forwards > 0) {  // gates: the CV of the mean gate mass
    const auto m = counts / forwards;
    r.cv = (m.std(/*unbiased=*/false) / m.mean().clamp_min(1e-12)).item<double>();
  }
  return r;
}

void IntervalStats::add(const ModelOutput& out, const Metrics& batch_metrics, double task_loss,
                        double aux_loss, int64_t tokens) {
  for (size_t i = 0; i < out.probes.size(); ++i) {
    if (layers_.size() <= i) layers_.push_back(LayerAccumulator(out.probes[i].name));
    layers_[i].add(out.probes[i], tokens);
    if (run_.size() <= i) run_.push_back(LayerAccumulator(out.probes[i].name));
    run_[i].add(out.probes[i], tokens);
  }
  for (const auto& [k, v] : batch_metrics) metrics_[k] += v;
  task_loss_ += task_loss;
  aux_loss_ += aux_loss;
  tokens_ += tokens;
  ++steps_;
}

json IntervalStats::flush(int64_t step, double elapsed, double interval_seconds, double lr) {
  metrics::TrainRecord r;
  r.step = step;
  r.elapsed_s = elapsed;
  r.loss = (task_loss_ + aux_loss_) / steps_;
  r.task_loss = task_loss_ / steps_;
  r.aux_loss = aux_loss_ / steps_;
  r.lr = lr;
  r.tokens_per_s = interval_seconds > 0 ? tokens_ / interval_seconds : 0.0;
  for (const auto& [k, v] : metrics_) r.metrics[k] = v / steps_;
  for (auto& l : layers_) {
    r.moe.push_back(l.record());
    l = LayerAccumulator(l.name);
  }
  metrics_.clear();
  task_loss_ = aux_loss_ = 0;
  tokens_ = steps_ = 0;
  return r;
}

std::vector<LayerLoad> IntervalStats::run_load() const {
  std::vector<LayerLoad> out;
  for (const auto& l : run_) {
    LayerLoad ld{l.name, {}, 0};
    const auto share = l.counts / l.counts.sum().clamp_min(1e-12);
    ld.share.assign(share.data_ptr<double>(), share.data_ptr<double>() + share.numel());
    ld.cv = (share.std(false) / share.mean().clamp_min(1e-12)).item<double>();
    out.push_back(std::move(ld));
  }
  return out;
}

}  // namespace moe::train
