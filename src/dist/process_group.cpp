// moe::dist::ProcessGroup over LibTorch's c10d Gloo backend (include/moe/distributed.h).
#include <arpa/inet.h>
#include <c10/util/Exception.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "moe/distributed.h"

#ifdef MOE_HAVE_GLOO
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace moe::dist {

#ifdef MOE_HAVE_GLOO

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

namespace {

// `host`: the address this rank's Gloo device binds to; null = the one this machine's hostname
// resolves to. MOE_GLOO_HOSTNAME overrides both.
std::unique_ptr<ProcessGroup::Impl> gloo_group(const c10::intrusive_ptr<c10d::Store>& store,
                                               int rank, int size,
                                               std::chrono::milliseconds timeout,
                                               const char* host) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  if (const char* env = std::getenv("MOE_GLOO_HOSTNAME")) host = env;
  options->devices.push_back(host ? c10d::ProcessGroupGloo::createDeviceForHostname(host)
                                  : c10d::ProcessGroupGloo::createDefaultDevice());
  auto impl = std::make_unique<ProcessGroup::Impl>();
  impl->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
  return impl;
}

void check_rank(int rank, int size, const char* who) {
  TORCH_CHECK_VALUE(size >= 1, who, ": the world size must be >= 1, got ", size);
  TORCH_CHECK_VALUE(rank >= 0 && rank < size, who, ": rank must be in [0, ", size, "), got ", rank);
}

int env_int(const char* name, const char* who) {
  const char* v = std::getenv(name);
  TORCH_CHECK_VALUE(v != nullptr && *v != '\0', who, ": the environment variable ", name,
                    " is not set (a launcher such as torchrun sets RANK, WORLD_SIZE, MASTER_ADDR "
                    "and MASTER_PORT)");
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && x >= 0 && x <= 65535 * 16, who, ": ", name,
                    " must be a non-negative integer, got '", v, "'");
  return static_cast<int>(x);
}

}  // namespace

bool available() { return true; }

std::shared_ptr<ProcessGroup> ProcessGroup::gloo_file(const std::string& path, int rank, int size,
                                                      std::chrono::milliseconds timeout) {
  check_rank(rank, size, "ProcessGroup::gloo_file");
  auto store = c10::make_intrusive<c10d::FileStore>(path, size);
  store->setTimeout(timeout);
  // One machine: the ranks meet on the loopback interface.
  return registered(gloo_group(store, rank, size, timeout, "127.0.0.1"));
}

std::shared_ptr<ProcessGroup> ProcessGroup::gloo_from_env(std::chrono::milliseconds timeout) {
  const char* who = "ProcessGroup::gloo_from_env";
  const int rank = env_int("RANK", who), size = env_int("WORLD_SIZE", who);
  const int port = env_int("MASTER_PORT", who);
  const char* addr = std::getenv("MASTER_ADDR");
  TORCH_CHECK_VALUE(addr != nullptr && *addr != '\0', who, ": MASTER_ADDR is not set");
  TORCH_CHECK_VALUE(port >= 1 && port <= 65535, who, ": MASTER_PORT must be in [1, 65535], got ",
                    port);
  check_rank(rank, size, who);
  c10d::TCPStoreOptions o;
  o.port = static_cast<std::uint16_t>(port);
  o.isServer = rank == 0;
  o.numWorkers = size;
  o.timeout = timeout;
  // Rank 0 serves the store and waits for all; the others connect to it. A rank that does not come
  // makes the others fail here after `timeout`, with c10d's terse message: say what was waited for.
  try {
    auto store = c10::make_intrusive<c10d::TCPStore>(addr, o);
    return registered(gloo_group(store, rank, size, timeout, nullptr));
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, who, ": rank ", rank, " of ", size, " could not meet the other ranks at ",
                addr, ":", port, " within ", timeout.count() / 1000.0, " s (",
                e.what_without_backtrace(),
                "); every rank must be started with the same WORLD_SIZE, MASTER_ADDR and "
                "MASTER_PORT, and rank 0 must be reachable there");
  }
}

int ProcessGroup::rank() const { return impl_->pg->getRank(); }
int ProcessGroup::size() const { return impl_->pg->getSize(); }

void ProcessGroup::all_reduce_sum(at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(),
              "ProcessGroup::all_reduce_sum: expected a contiguous CPU tensor");
  // Gloo (LibTorch 1.13) sums float32/64, float16 and integers; a bfloat16 sum is made in float32
  // and rounded once, a bool one as a count.
  if (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kBool) {
    auto wide = t.to(t.scalar_type() == at::kBool ? at::kLong : at::kFloat);
    all_reduce_sum(wide);
    t.copy_(wide);
    return;
  }
  std::vector<at::Tensor> ts{t};
  impl_->pg->allreduce(ts)->wait();
}

at::Tensor ProcessGroup::all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                                    const std::vector<int64_t>& recv_rows) {
  const int W = size();
  TORCH_CHECK_VALUE(
      static_cast<int>(send_rows.size()) == W && static_cast<int>(recv_rows.size()) == W,
      "ProcessGroup::all_to_all: expected ", W, " send and receive counts, got ", send_rows.size(),
      " and ", recv_rows.size());
  int64_t sent = 0, received = 0;
  for (int j = 0; j < W; ++j) {
    TORCH_CHECK_VALUE(send_rows[j] >= 0 && recv_rows[j] >= 0,
                      "ProcessGroup::all_to_all: counts must be >= 0");
    sent += send_rows[j];
    received += recv_rows[j];
  }
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(0) == sent,
                    "ProcessGroup::all_to_all: input has ", input.dim() >= 1 ? input.size(0) : 0,
                    " rows but the send counts add up to ", sent);
  auto in = input.contiguous();
  auto sizes = in.sizes().vec();
  sizes[0] = received;
  auto out = at::empty(sizes, in.options());
  auto s = send_rows, r = recv_rows;
  // Gloo (LibTorch 1.13) moves no bfloat16, int16 or bool: their bytes travel as float16 (a copy,
  // never read as numbers) and uint8.
  const auto type = in.scalar_type();
  const auto wire = type == at::kBFloat16 || type == at::kShort ? at::kHalf
                    : type == at::kBool                         ? at::kByte
                                                                : type;
  auto out_wire = out.view(wire);
  auto in_wire = in.view(wire);
  impl_->pg->alltoall_base(out_wire, in_wire, r, s)->wait();
  return out;
}

std::vector<int64_t> ProcessGroup::exchange_counts(const std::vector<int64_t>& counts) {
  const int W = size();
  TORCH_CHECK_VALUE(static_cast<int>(counts.size()) == W,
                    "ProcessGroup::exchange_counts: expected ", W, " counts, got ", counts.size());
  auto in = at::tensor(counts, at::kLong);
  auto out = at::empty({W}, at::kLong);
  std::vector<int64_t> ones(W, 1);
  auto s = ones, r = ones;
  impl_->pg->alltoall_base(out, in, r, s)->wait();
  return std::vector<int64_t>(out.data_ptr<int64_t>(), out.data_ptr<int64_t>() + W);
}

void ProcessGroup::barrier() { impl_->pg->barrier()->wait(); }

#else  // no Gloo in this build

struct ProcessGroup::Impl {};

namespace {
[[noreturn]] void missing(const char* who) {
  TORCH_CHECK(false, who,
              ": this build of moe has no c10d Gloo backend (install Gloo's headers, Debian's "
              "libgloo-dev, and configure again)");
}
}  // namespace

bool available() { return false; }
std::shared_ptr<ProcessGroup> ProcessGroup::gloo_file(const std::string&, int, int,
                                                      std::chrono::milliseconds) {
  missing("ProcessGroup::gloo_file");
}
std::shared_ptr<ProcessGroup> ProcessGroup::gloo_from_env(std::chrono::milliseconds) {
  missing("ProcessGroup::gloo_from_env");
}
int ProcessGroup::rank() const { missing("ProcessGroup::rank"); }
int ProcessGroup::size() const { missing("ProcessGroup::size"); }
void ProcessGroup::all_reduce_sum(at::Tensor&) { missing("ProcessGroup::all_reduce_sum"); }
at::Tensor ProcessGroup::all_to_all(const at::Tensor&, const std::vector<int64_t>&,
                                    const std::vector<int64_t>&) {
  missing("ProcessGroup::all_to_all");
}
std::vector<int64_t> ProcessGroup::exchange_counts(const std::vector<int64_t>&) {
  missing("ProcessGroup::exchange_counts");
}
void ProcessGroup::barrier() { missing("ProcessGroup::barrier"); }

#endif

int free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  TORCH_CHECK(fd >= 0, "free_loopback_port: cannot open a socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  TORCH_CHECK(ok, "free_loopback_port: cannot bind a port of 127.0.0.1");
  return ntohs(a.sin_port);
}

namespace {

// The live groups by id, for the autograd nodes of the collectives (collectives.cpp).
std::mutex registry_mutex;
std::map<int64_t, std::weak_ptr<ProcessGroup>>& registry() {
  static std::map<int64_t, std::weak_ptr<ProcessGroup>> groups;
  return groups;
}

}  // namespace

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  static std::atomic<int64_t> next{1};
  id_ = next++;
}

ProcessGroup::~ProcessGroup() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry().erase(id_);
}

std::shared_ptr<ProcessGroup> ProcessGroup::registered(std::unique_ptr<Impl> impl) {
  std::shared_ptr<ProcessGroup> group(new ProcessGroup(std::move(impl)));
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry()[group->id_] = group;
  return group;
}

std::shared_ptr<ProcessGroup> ProcessGroup::find(int64_t id) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  const auto it = registry().find(id);
  return it == registry().end() ? nullptr : it->second.lock();
}

}  // namespace moe::dist
