// The sections of the report page (tools/report/report.h), each as HTML: the summary table, the
// learning curves, and per MoE layer the expert load, the load balance and adaptive routing.
#pragma once

#include <string>
#include <vector>

#include "report/run.h"

namespace moe::report {

/// <section id="summary">: the start records' fields, final metrics, wall time, steps.
std::string render_summary(const Run& run);

/// <section id="curves">: loss, the task's metrics, aux loss, learning rate, throughput; the
/// compare runs' eval curves dashed.
std::string render_curves(const Run& run, const std::vector<Run>& compare);

/// <section id="experts">: per layer a heat map, a histogram and a table of its statistics.
std::string render_experts(const std::vector<Layer>& layers);

/// <section id="balance">: CV of the load, dropped (and unrouted) fractions per layer; "" when
/// there is nothing to draw.
std::string render_balance(const std::vector<Layer>& layers);

/// Whether the run routes adaptively: a top_any router, or a layer whose active experts change.
bool adaptive_routing(const Run& run, const std::vector<Layer>& layers);

/// <section id="adaptive">: active experts and mean experts per token per layer.
std::string render_adaptive(const std::vector<Layer>& layers);

}  // namespace moe::report
