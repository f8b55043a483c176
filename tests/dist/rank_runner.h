// Running a test as the ranks of one Gloo group: the parent test starts W copies of the test
// program, each running one child test as one rank; the ranks meet through a FileStore.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "moe/distributed.h"

namespace moe::testing::dist {

/// Starts `size` ranks running the test `child` (a gtest filter) and waits for them, at most
/// `timeout` (then they are killed). Returns each rank's exit status (-1: killed or crashed).
std::vector<int> run_ranks(int size, const std::string& child, std::chrono::seconds timeout);

/// run_ranks with a 120 s limit, as a gtest assertion: success when every rank exited with 0,
/// else the ranks that did not.
::testing::AssertionResult ranks_pass(int size, const std::string& child);

/// This process's rank when it was started by run_ranks, else -1 (the parent test).
int my_rank();

/// Joins the group of the ranks run_ranks started.
std::shared_ptr<moe::dist::ProcessGroup> join();

}  // namespace moe::testing::dist
