// The records of metrics.jsonl (tools/train/metrics_schema.h): what the writer's structs put on a
// line, byte for byte (the format of docs/cli.md, which existing run folders hold), and what a
// reader gets back from those lines and from lines with missing or mistyped values.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "train/metrics_schema.h"

namespace {

namespace metrics = moe::metrics;
using nlohmann::json;

metrics::TrainRecord sample_train_record() {
  metrics::TrainRecord r;
  r.step = 10;
  r.elapsed_s = 3.5;
  r.loss = 2.25;
  r.task_loss = 2.0;
  r.aux_loss = 0.25;
  r.lr = 0.001;
  r.tokens_per_s = 1000.0;
  r.metrics = {{"bpc", 3.0}, {"grad_norm", 0.5}};
  metrics::LayerRecord sparse;
  sparse.name = "blocks.0.ffn";
  sparse.share = {0.75, 0.25};
  sparse.cv = 0.5;
  sparse.cv_importance = 0.25;
  sparse.dropped = 0.0;
  sparse.mean_k = 2.0;
  sparse.active_experts = 2;
  sparse.unrouted = 0.0;
  metrics::LayerRecord gate;
  gate.name = "gate0";
  gate.share = {0.5, 0.5};
  gate.cv = 0.0;
  r.moe = {sparse, gate};
  return r;
}

TEST(MetricsSchema, TrainRecordLineIsTheFileFormat) {
  const json j = sample_train_record();
  EXPECT_EQ(j.dump(),
            R"({"aux_loss":0.25,"bpc":3.0,"elapsed_s":3.5,"event":"train","grad_norm":0.5,)"
            R"("loss":2.25,"lr":0.001,"moe":[{"active_experts":2,"cv":0.5,"cv_importance":0.25,)"
            R"("dropped":0.0,)"
            R"("mean_k":2.0,"name":"blocks.0.ffn","share":[0.75,0.25],"unrouted":0.0},)"
            R"({"cv":0.0,"name":"gate0","share":[0.5,0.5]}],"step":10,"task_loss":2.0,)"
            R"("tokens_per_s":1000.0})");

  // a non-finite value is written as null; no "moe" without layers
  metrics::TrainRecord dense;
  dense.step = 1;
  dense.loss = NAN;
  const std::string line = json(dense).dump();
  EXPECT_NE(line.find(R"("loss":null)"), std::string::npos) << line;
  EXPECT_EQ(line.find("moe"), std::string::npos) << line;
}

TEST(MetricsSchema, TrainRecordReadsBackWhatWasWritten) {
  const metrics::TrainRecord w = sample_train_record();
  const auto r = json(w).get<metrics::TrainRecord>();
  EXPECT_EQ(r.step, 10);
  EXPECT_EQ(r.loss, 2.25);
  EXPECT_EQ(r.tokens_per_s, 1000.0);
  EXPECT_EQ(r.metrics, w.metrics);
  EXPECT_EQ(r.metric("bpc"), 3.0);
  EXPECT_TRUE(std::isnan(r.metric("accuracy")));
  ASSERT_EQ(r.moe.size(), 2u);
  EXPECT_EQ(r.moe[0].name, "blocks.0.ffn");
  EXPECT_EQ(r.moe[0].share, w.moe[0].share);
  EXPECT_EQ(r.moe[0].active_experts, 2.0);
  EXPECT_EQ(r.moe[0].cv_importance, 0.25);
  EXPECT_EQ(r.moe[1].cv, 0.0);
  EXPECT_FALSE(r.moe[1].cv_importance.has_value());
  EXPECT_FALSE(r.moe[1].dropped.has_value()) << "gates log no dropped fraction";
}

TEST(MetricsSchema, ReadersTakeMissingAndMistypedValuesAsMissing) {
  const auto r = json::parse(R"({"event":"train","step":4.0,"loss":null,"lr":"fast","mse1":0.5,)"
                             R"("auc0":0.9,"mse1234":1,"moe":[{"share":[0.5,null],"cv":"x"},7,)"
                             R"({"name":"b","share":0.25}]})")
                     .get<metrics::TrainRecord>();
  EXPECT_EQ(r.step, 4);
  EXPECT_TRUE(std::isnan(r.loss));
  EXPECT_TRUE(std::isnan(r.lr));
  ASSERT_EQ(r.per_task("mse").size(), 2u);
  EXPECT_TRUE(std::isnan(r.per_task("mse")[0]));
  EXPECT_EQ(r.per_task("mse")[1], 0.5);
  EXPECT_EQ(r.per_task("auc"), std::vector<double>{0.9});
  ASSERT_EQ(r.moe.size(), 2u) << "an entry that is not an object is skipped";
  EXPECT_EQ(r.moe[0].name, "layer 0");
  EXPECT_EQ(r.moe[0].share[0], 0.5);
  EXPECT_TRUE(std::isnan(r.moe[0].share[1]));
  EXPECT_FALSE(r.moe[0].cv.has_value());
  EXPECT_EQ(r.moe[1].share, std::vector<double>{0.25}) << "a bare number is a list of one";

  try {
    json::parse(R"({"event":"eval","split":"valid"})").get<metrics::EvalRecord>();
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), R"(a "eval" record without "step")");
  }
  EXPECT_THROW(json::parse(R"({"event":"end","step":2.5})").get<metrics::EndRecord>(),
               std::invalid_argument);
}

TEST(MetricsSchema, EvalRecordFromATasksMetrics) {
  metrics::EvalRecord e;
  e.step = 600;
  e.metrics = metrics::eval_metrics({{"loss", 1.5}, {"mse0", 0.25}, {"mse1", 0.5}, {"tokens", 9}});
  EXPECT_EQ(json(e).dump(),
            R"({"event":"eval","loss":1.5,"mse":[0.25,0.5],"split":"valid","step":600})");
  e.full_split = true;
  EXPECT_EQ(json(e).at("full_split"), true);

  const auto r = json(e).get<metrics::EvalRecord>();
  EXPECT_EQ(r.step, 600);
  EXPECT_EQ(r.split, "valid");
  EXPECT_TRUE(r.full_split);
  EXPECT_EQ(r.metrics.value("loss"), 1.5);
  EXPECT_EQ(r.metrics.list("mse"), (std::vector<double>{0.25, 0.5}));
  EXPECT_TRUE(r.metrics.list("auc").empty());
  EXPECT_EQ(json::parse(R"({"step":1,"auc":0.75})").get<metrics::EvalRecord>().metrics.list("auc"),
            std::vector<double>{0.75});
}

TEST(MetricsSchema, EndRecordLine) {
  EXPECT_EQ(json(metrics::EndRecord{600, 190.5}).dump(),
            R"({"elapsed_s":190.5,"event":"end","step":600})");
  const auto r = json::parse(R"({"event":"end","step":600})").get<metrics::EndRecord>();
  EXPECT_EQ(r.step, 600);
  EXPECT_TRUE(std::isnan(r.elapsed_s));
}

}  // namespace
