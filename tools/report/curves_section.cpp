// The learning curves of the report page (tools/report/sections.h).
#include <algorithm>
#include <cmath>

#include "report/format.h"
#include "report/line_chart.h"
#include "report/sections.h"

namespace moe::report {
namespace {

namespace key = metrics::key;

void add_series(std::vector<Series>& to, std::string label, const std::vector<double>& x,
                std::vector<double> y, bool dashed = false) {
  to.push_back(Series{std::move(label), x, std::move(y), dashed});
}

bool is_per_task(const std::string& metric) { return metric == key::kAuc || metric == key::kMse; }

// Eval series of one run: label prefix, one series per split (and per task for list metrics).
void add_eval_series(std::vector<Series>& to, const Run& run, const std::string& prefix,
                     const std::string& metric, bool dashed) {
  const auto splits = eval_splits(run);
  for (const auto& split : splits) {
    std::vector<double> x;
    std::vector<std::vector<double>> ys;  // one per task for auc/mse, else one
    for (const auto& r : run.eval) {
      if (r.split != split) continue;
      x.push_back(static_cast<double>(r.step));
      const std::vector<double> vals = is_per_task(metric)
                                           ? r.metrics.list(metric)
                                           : std::vector<double>(1, r.metrics.value(metric));
      if (ys.size() < vals.size())
        ys.resize(vals.size(), std::vector<double>(x.size() - 1, metrics::kMissing));
      for (size_t t = 0; t < ys.size(); ++t)
        ys[t].push_back(t < vals.size() ? vals[t] : metrics::kMissing);
    }
    for (size_t t = 0; t < ys.size(); ++t) {
      std::string label = prefix;
      if (splits.size() > 1 || split != metrics::kDefaultSplit) label += " " + split;
      if (is_per_task(metric)) label += " task " + std::to_string(t + 1);
      add_series(to, label, x, std::move(ys[t]), dashed);
    }
  }
}

// One value per train record.
template <class Value>
std::vector<double> train_values(const Run& run, Value value) {
  std::vector<double> v;
  for (const auto& r : run.train) v.push_back(value(r));
  return v;
}

std::vector<double> train_steps(const Run& run) {
  return train_values(run, [](const metrics::TrainRecord& r) { return double(r.step); });
}

// Train loss (and task loss where the auxiliary loss makes a difference), eval loss.
std::string loss_chart(const Run& run, const std::vector<Run>& compare) {
  const auto steps = train_steps(run);
  LineChart loss{"Loss", "step", "loss", {}};
  add_series(loss.series, "train loss", steps,
             train_values(run, [](const metrics::TrainRecord& r) { return r.loss; }));
  bool task_differs = false;
  for (const auto& r : run.train)
    if (present(r.loss) && present(r.task_loss) &&
        std::fabs(r.loss - r.task_loss) > 1e-9 * std::max(1.0, std::fabs(r.loss)))
      task_differs = true;
  if (task_differs)
    add_series(loss.series, "train task loss", steps,
               train_values(run, [](const metrics::TrainRecord& r) { return r.task_loss; }));
  add_eval_series(loss.series, run, "eval loss", key::kLoss, false);
  for (const auto& c : compare) add_eval_series(loss.series, c, c.name, key::kLoss, true);
  return render_line_chart(loss);
}

// A task's metric in training (per task for auc and mse) and evaluation.
std::string metric_chart(const Run& run, const std::vector<Run>& compare, const std::string& k,
                         const char* title, const char* axis) {
  const auto steps = train_steps(run);
  LineChart chart{title, "step", axis, {}};
  if (!is_per_task(k)) {
    add_series(chart.series, "train " + k, steps,
               train_values(run, [&](const metrics::TrainRecord& r) { return r.metric(k); }));
  } else {
    std::vector<std::vector<double>> lists;
    size_t tasks = 0;
    for (const auto& r : run.train) {
      lists.push_back(r.per_task(k));
      tasks = std::max(tasks, lists.back().size());
    }
    for (size_t t = 0; t < tasks; ++t) {
      std::vector<double> y;
      for (const auto& v : lists) y.push_back(t < v.size() ? v[t] : metrics::kMissing);
      add_series(chart.series, "train " + k + " task " + std::to_string(t + 1), steps,
                 std::move(y));
    }
  }
  add_eval_series(chart.series, run, "eval " + k, k, false);
  for (const auto& c : compare) add_eval_series(chart.series, c, c.name, k, true);
  return render_line_chart(chart);
}

// A chart of one train-record value.
template <class Value>
std::string train_chart(const Run& run, const char* title, const char* axis, const char* label,
                        Value value) {
  LineChart chart{title, "step", axis, {}};
  add_series(chart.series, label, train_steps(run), train_values(run, value));
  return render_line_chart(chart);
}

}  // namespace

std::string render_curves(const Run& run, const std::vector<Run>& compare) {
  std::string charts = loss_chart(run, compare);
  charts += metric_chart(run, compare, key::kBpc, "Bits per character", "bits per character");
  charts += metric_chart(run, compare, key::kAccuracy, "Accuracy", "accuracy");
  charts += metric_chart(run, compare, key::kAuc, "AUC per task", "AUC");
  charts += metric_chart(run, compare, key::kMse, "MSE per task", "MSE");
  bool aux = false;
  for (const auto& r : run.train) aux = aux || (present(r.aux_loss) && r.aux_loss != 0);
  if (aux)
    charts += train_chart(run, "Auxiliary (load-balancing) loss", "aux loss", "aux loss",
                          [](const metrics::TrainRecord& r) { return r.aux_loss; });
  charts += train_chart(run, "Learning rate", "learning rate", "lr",
                        [](const metrics::TrainRecord& r) { return r.lr; });
  charts += train_chart(run, "Throughput", "tokens per second", "tokens/s",
                        [](const metrics::TrainRecord& r) { return r.tokens_per_s; });

  std::string out = "<section id=\"curves\"><h2>Learning curves</h2>";
  if (!compare.empty()) {
    out += "<p class=\"note\">Dashed: eval curves of ";
    for (size_t i = 0; i < compare.size(); ++i)
      out += (i ? ", " : "") + std::string("<b>") + esc(compare[i].name) + "</b>";
    out += ".</p>";
  }
  return out + "<div class=\"charts\">" + charts + "</div></section>\n";
}

}  // namespace moe::report
