// The expert-load charts of one MoE layer (tools/report/report.h): a heat map of each expert's
// share per logging interval, and a histogram of the shares averaged over the run.
#pragma once

#include <string>

#include "report/run.h"

namespace moe::report {

/// <svg class="heatmap">: one row per expert, one column per logged record (at most
/// kMaxHeatmapColumns, report.h); "" when the layer logged no shares.
std::string render_heatmap(const Layer& layer);

/// <svg class="histogram">: each expert's share averaged over the layer's records (an entry a
/// record lacks counts as 0) as bars, with the uniform share 1/E dashed; "" when the layer logged
/// no shares.
std::string render_histogram(const Layer& layer);

}  // namespace moe::report
