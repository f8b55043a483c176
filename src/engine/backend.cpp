// The registry of engine backends (backend.h).
#include "engine/backend.h"

#include <c10/util/Exception.h>

#include <map>
#include <mutex>
#include <string>

#include "engine/cpu/cpu_backend.h"

namespace moe::engine {
namespace {

// The backends built into the library, one line each (a CUDA build adds its own line here).
void builtin_backends(std::map<c10::DeviceType, std::shared_ptr<const ExpertBackend>>& into) {
  into[c10::DeviceType::CPU] = cpu::make_cpu_backend();
}

struct Registry {
  std::mutex mutex;
  std::map<c10::DeviceType, std::shared_ptr<const ExpertBackend>> backends;
};

Registry& registry() {
  static Registry* r = [] {
    auto* reg = new Registry;  // never destroyed: backends may be looked up during exit
    builtin_backends(reg->backends);
    return reg;
  }();
  return *r;
}

// "cpu, cuda": the device types with a backend (the caller holds the mutex).
std::string names(const Registry& r) {
  std::string s;
  for (const auto& entry : r.backends)
    s += (s.empty() ? "" : ", ") + c10::DeviceTypeName(entry.first, /*lower_case=*/true);
  return s.empty() ? "none" : s;
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
  const auto it = r.backends.find(device.type());
  TORCH_CHECK_NOT_IMPLEMENTED(it != r.backends.end(),
                              "expert_mlp: no engine backend for tensors on ", device,
                              "; backends exist for: ", names(r));
  return it->second;
}

std::vector<c10::DeviceType> registered_backends() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<c10::DeviceType> types;
  for (const auto& entry : r.backends) types.push_back(entry.first);
  return types;
}

}  // namespace moe::engine
