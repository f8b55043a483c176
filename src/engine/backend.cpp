// The registry of engine backends (backend.h).
#include "engine/backend.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "engine/cpu/cpu_backend.h"
#include "engine/portable/portable_backend.h"

namespace moe::engine {
namespace {

// The backends built into the library, one line each (a CUDA build adds its own line here).
void builtin_backends(std::map<c10::DeviceType, std::shared_ptr<const ExpertBackend>>& into) {
  into[c10::DeviceType::CPU] = cpu::make_cpu_backend();
}

struct Registry {
  std::mutex mutex;
  std::map<c10::DeviceType, std::shared_ptr<const ExpertBackend>> backends;
  // Every device type without a backend of its own; the CPU's too under
  // MOE_ENGINE_BACKEND=portable.
  std::shared_ptr<const ExpertBackend> portable = portable::make_portable_backend();
  bool portable_everywhere = false;
};

// MOE_ENGINE_BACKEND: unset or "native" (each device's own backend), or "portable".
bool portable_from_env() {
  const char* v = std::getenv("MOE_ENGINE_BACKEND");
  if (v == nullptr || *v == '\0' || std::string(v) == "native") return false;
  TORCH_CHECK_VALUE(std::string(v) == "portable",
                    "MOE_ENGINE_BACKEND must be native or portable, got '", v, "'");
  return true;
}

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;  // never destroyed: backends may be looked up during exit
    builtin_backends(reg->backends);
    reg->portable_everywhere = portable_from_env();
    return reg;
  }();
  return *r;
}

}  // namespace

void register_backend(c10::DeviceType type, std::shared_ptr<const ExpertBackend> backend) {
  TORCH_CHECK(backend, "register_backend: no backend given for ", c10::DeviceTypeName(type, true));
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.backends[type] = std::move(backend);
}

std::shared_ptr<const ExpertBackend> backend_for(const c10::Device& device) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.portable_everywhere) return r.portable;
  const auto it = r.backends.find(device.type());
  return it != r.backends.end() ? it->second : r.portable;
}

bool portable_path(const c10::Device& device) {
  return !device.is_cpu() || registry().portable_everywhere;
}

std::vector<c10::DeviceType> registered_backends() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<c10::DeviceType> types;
  for (const auto& entry : r.backends) types.push_back(entry.first);
  return types;
}

}  // namespace moe::engine
