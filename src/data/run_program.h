// Running an external program without a shell: the argument vector goes to posix_spawnp as is, so
// no word of it (a path with quotes, semicolons or spaces) is ever interpreted as a command. Used
// by `moe data kjv` to run `bible`; reusable by any code of the library that runs a program.
// Private to the library (src/); the tests reach it through the src include path.
#pragma once

#include <string>
#include <vector>

namespace moe::detail {

struct ProgramResult {
  int start_error = 0;  ///< errno of a failed start (ENOENT: no such program), 0 if it ran
  bool exited = false;  ///< it ended by exit() (else by a signal, or it never ran)
  int exit_code = -1;   ///< its exit code when `exited`
  int signal = 0;       ///< the signal that ended it, 0 if none
  std::string output;   ///< what it wrote on stdout (and stderr, when merged)

  bool ok() const { return start_error == 0 && exited && exit_code == 0; }

  /// "could not start: No such file or directory", "exit status 3", "killed by signal 9 (Killed)".
  std::string status_text() const;
};

/// Runs argv[0] (searched in PATH when it has no '/') with the arguments argv[1..], without a
/// shell, stdin from /dev/null, and reads its stdout (with stderr when `merge_stderr`) through a
/// pipe until it closes, then waits for it. A program that cannot be started (missing, not
/// executable) is reported in `start_error`, not thrown. Throws std::runtime_error only when the
/// pipe or the wait itself fails.
ProgramResult run_program(const std::vector<std::string>& argv, bool merge_stderr = true);

}  // namespace moe::detail
