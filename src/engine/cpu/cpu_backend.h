// The CPU backend of the expert engine (cpu_backend.cpp), registered for DeviceType::CPU by
// src/engine/backend.cpp.
#pragma once

#include <memory>

#include "engine/backend.h"

namespace moe::engine::cpu {

std::shared_ptr<const ExpertBackend> make_cpu_backend();

}  // namespace moe::engine::cpu
