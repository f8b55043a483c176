// The differentiable collectives of include/moe/distributed.h: autograd functions around
// ProcessGroup's all-to-all and all-reduce.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <string>
#include <vector>

#include "moe/distributed.h"

namespace moe::dist {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The nodes keep the group's id, not the group: a graph that is never run backward must not keep a
// process group (and its connections) alive.
std::shared_ptr<ProcessGroup> group_of(AutogradContext* ctx, const char* who) {
  auto group = ProcessGroup::find(ctx->saved_data["group"].toInt());
  TORCH_CHECK(group != nullptr, who, ": the process group was destroyed before the backward");
  return group;
}

struct AllToAllRows : public torch::autograd::Function<AllToAllRows> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            std::shared_ptr<ProcessGroup> group, std::vector<int64_t> send_rows,
                            std::vector<int64_t> recv_rows) {
    ctx->saved_data["send"] = send_rows;
    ctx->saved_data["recv"] = recv_rows;
    ctx->saved_data["group"] = group->id();
    return group->all_to_all(input, send_rows, recv_rows);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto group = group_of(ctx, "all_to_all_rows");
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    // Autograd materialises an unused output's gradient as zeros, so every rank joins the
    // reverse exchange.
    const auto g = grads[0].contiguous();
    return {group->all_to_all(g, recv, send), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            std::shared_ptr<ProcessGroup> group) {
    ctx->saved_data["group"] = group->id();
    auto out = x.contiguous().clone();
    group->all_reduce_sum(out);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto group = group_of(ctx, "all_reduce_sum");
    auto g = grads[0].contiguous().clone();
    group->all_reduce_sum(g);
    return {g, at::Tensor()};
  }
};

}  // namespace

at::Tensor all_to_all_rows(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& input,
                           const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows) {
  TORCH_CHECK_VALUE(group != nullptr, "all_to_all_rows: no process group");
  return AllToAllRows::apply(input, group, send_rows, recv_rows);
}

at::Tensor all_reduce_sum(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x) {
  TORCH_CHECK_VALUE(group != nullptr, "all_reduce_sum: no process group");
  return AllReduceSum::apply(x, group);
}

at::Tensor all_gather_rows(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x) {
  TORCH_CHECK_VALUE(group != nullptr, "all_gather_rows: no process group");
  TORCH_CHECK_VALUE(x.dim() >= 1, "all_gather_rows: expected rows [n, ...], got a 0-dim tensor");
  const int W = group->size();
  const int64_t n = x.size(0);
  const auto from = group->exchange_counts(std::vector<int64_t>(W, n));
  // W copies of x, one to each rank: the all-to-all's backward returns each copy's gradient, and
  // cat's backward sums them.
  return all_to_all_rows(group, at::cat(std::vector<at::Tensor>(W, x)), std::vector<int64_t>(W, n),
                         from);
}

std::vector<std::string> all_gather_strings(const std::shared_ptr<ProcessGroup>& group,
                                            const std::string& s) {
  TORCH_CHECK_VALUE(group != nullptr, "all_gather_strings: no process group");
  const int W = group->size();
  const int64_t n = static_cast<int64_t>(s.size());
  const auto from = group->exchange_counts(std::vector<int64_t>(W, n));
  auto bytes = at::empty({n}, at::kByte);
  std::copy(s.begin(), s.end(), reinterpret_cast<char*>(bytes.data_ptr<uint8_t>()));
  const auto all = group->all_to_all(at::cat(std::vector<at::Tensor>(W, bytes)),
                                     std::vector<int64_t>(W, n), from);
  std::vector<std::string> out;
  const char* p = reinterpret_cast<const char*>(all.data_ptr<uint8_t>());
  for (int j = 0; j < W; ++j) {
    out.emplace_back(p, p + from[j]);
    p += from[j];
  }
  return out;
}

}  // namespace moe::dist
