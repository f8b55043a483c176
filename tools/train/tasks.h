// The data and the metrics of each `moe train` task: batches drawn with the global CPU generator
// (so that a checkpoint's RNG state makes a resumed run draw the same batches), the training loss,
// and evaluation on fixed, ordered batches of a split.
//
//   lm         KJV characters: next-character cross-entropy; bits per character = nats / ln 2
//   classify   Fashion-MNIST: cross-entropy, accuracy (valid = the last 5000 training images)
//   multitask  MMoE synthetic regression (two tasks): MSE per task (80/10/10 split)
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <string>

#include "train/models.h"
#include "train/train_config.h"

namespace moe::train {

struct Batch {
  torch::Tensor input, target;
  int64_t tokens = 0;  ///< tokens the MoE layers see (characters or samples)
};

/// Scalar results by name ("loss", "bpc", "accuracy", "mse0", ...: tools/train/metrics_schema.h).
using Metrics = std::map<std::string, double>;

class TaskData {
 public:
  virtual ~TaskData() = default;
  /// A random training batch (global CPU generator).
  virtual Batch train_batch(int64_t batch_size) = 0;
  /// The task loss of a forward pass (0-dim, differentiable) and its batch metrics.
  virtual torch::Tensor loss(const ModelOutput& out, const Batch& batch, Metrics* metrics) = 0;
  /// Evaluates `model` (in eval mode, without gradients) on the first `max_batches` batches of
  /// `split` ("valid" or "test"); 0 = the whole split. Metrics are averaged per token.
  virtual Metrics evaluate(Model& model, const std::string& split, int64_t batch_size,
                           int64_t max_batches) = 0;
  /// The LM's alphabet size; the multitask input width.
  virtual int64_t vocab_size() const { return 0; }
  virtual int64_t input_dim() const { return 0; }
  /// One line about the data for the log.
  virtual std::string describe() const = 0;
};

std::unique_ptr<TaskData> load_task_data(const TrainConfig& config);

}  // namespace moe::train
