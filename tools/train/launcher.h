// `moe train ... --nproc N`: N ranks of `moe train` on this machine (docs/distributed.md).
#pragma once

#include <string>
#include <vector>

namespace moe::train {

/// Starts `nproc` copies of this program with `args` (argv[1..] without --nproc) and the launcher
/// environment every rank reads (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR =
/// 127.0.0.1, MASTER_PORT = a free port), and MOE_NUM_THREADS = cores / nproc unless the threads
/// are set; waits for them and returns the exit status: 0 when every rank succeeded, 130 when they
/// were interrupted, else the first failure's. SIGINT and SIGTERM sent to the launcher go to the
/// ranks. When a rank fails, the others fail on their own within the process group's timeout
/// (a collective finds the rank gone); any left `grace_seconds` later are killed.
int launch_ranks(int nproc, const std::vector<std::string>& args, double grace_seconds);

}  // namespace moe::train
