// write_file_atomically (include/moe/io/atomic_file.h).
#include "moe/io/atomic_file.h"

#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace moe::io {
namespace {

std::string os_error() { return std::strerror(errno); }

// Closes a file descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const void* data, size_t n, const std::string& path, const char* who) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    TORCH_CHECK(w > 0, who, ": writing ", path, " failed: ", os_error());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// The process umask without changing it (umask() can only be read by setting it, which races with
// other threads creating files): Linux reports it in /proc/self/status; 022 if that is unreadable.
mode_t process_umask() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  mode_t mask = 022;
  if (f == nullptr) return mask;
  char line[256];
  while (std::fgets(line, sizeof line, f) != nullptr) {
    unsigned m = 0;
    if (std::sscanf(line, "Umask: %o", &m) == 1) {
      mask = static_cast<mode_t>(m);
      break;
    }
  }
  std::fclose(f);
  return mask;
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

void write_file_atomically(const std::string& path,
                           const std::vector<std::pair<const void*, size_t>>& chunks,
                           const char* who) {
  std::string tmp = path + ".tmp.XXXXXX";
  Fd f;
  f.fd = ::mkstemp(tmp.data());
  TORCH_CHECK(f.fd >= 0, who, ": cannot create a temporary file next to ", path, ": ", os_error());
  try {
    for (const auto& [data, n] : chunks) write_all(f.fd, data, n, tmp, who);
    TORCH_CHECK(::fsync(f.fd) == 0, who, ": fsync of ", tmp, " failed: ", os_error());
    // mkstemp creates 0600: give the file the mode it had, or what a new file would get
    struct stat old;
    mode_t mode;
    if (::stat(path.c_str(), &old) == 0) {
      mode = old.st_mode & 07777;
    } else {
      mode = 0666 & ~process_umask();
    }
    TORCH_CHECK(::fchmod(f.fd, mode) == 0, who, ": chmod of ", tmp, " failed: ", os_error());
    const int fd = f.fd;
    f.fd = -1;
    TORCH_CHECK(::close(fd) == 0, who, ": closing ", tmp, " failed: ", os_error());
    TORCH_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, who, ": renaming ", tmp, " to ", path,
                " failed: ", os_error());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Make the rename itself durable.
  Fd dir;
  dir.fd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY);
  TORCH_CHECK(dir.fd >= 0 && ::fsync(dir.fd) == 0, who, ": ", path,
              " was written and renamed, but syncing its folder failed (the rename may not survive "
              "a power loss): ",
              os_error());
}

}  // namespace moe::io
