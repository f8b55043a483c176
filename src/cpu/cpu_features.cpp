// CPU features from CPUID and the path of bf16 products (include/moe/cpu.h).
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>

#include "moe/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define MOE_X86 1
#endif

namespace moe::cpu {
namespace {

#ifdef MOE_X86
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned sub = 0) {
  Regs r;
  if (!__get_cpuid_count(leaf, sub, &r.a, &r.b, &r.c, &r.d)) r = Regs{};
  return r;
}

bool bit(unsigned v, int i) { return ((v >> i) & 1u) != 0; }

// The register state the OS saves on a context switch (XCR0); 0 without OSXSAVE.
unsigned long long xcr0() {
  if (!bit(cpuid(1).c, 27)) return 0;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

std::string brand() {
  if (cpuid(0x80000000).a < 0x80000004) return "unknown CPU";
  char s[49] = {};
  for (unsigned i = 0; i < 3; ++i) {
    const Regs r = cpuid(0x80000002 + i);
    std::memcpy(s + 16 * i, &r, 16);
  }
  std::string out(s);
  out.erase(0, out.find_first_not_of(' '));
  out.erase(out.find_last_not_of(' ') + 1);
  return out;
}

Features detect() {
  Features f;
  f.model = brand();
  const unsigned max_leaf = cpuid(0).a;
  const Regs l1 = cpuid(1);
  const Regs l7 = max_leaf >= 7 ? cpuid(7, 0) : Regs{};
  const Regs l7s1 = max_leaf >= 7 && l7.a >= 1 ? cpuid(7, 1) : Regs{};
  const unsigned long long x = xcr0();
  const bool os_avx = (x & 0x6) == 0x6;                 // XMM and YMM state
  const bool os_avx512 = os_avx && (x & 0xE0) == 0xE0;  // opmask, ZMM0-15 high, ZMM16-31
  const bool os_amx = (x & 0x60000) == 0x60000;         // TILECFG and TILEDATA
  f.avx2 = os_avx && bit(l1.c, 28) && bit(l1.c, 12) && bit(l7.b, 5);
  f.avx512 = os_avx512 && bit(l7.b, 16) && bit(l7.b, 17) && bit(l7.b, 30) && bit(l7.b, 31);
  f.avx512_bf16 = f.avx512 && bit(l7s1.a, 5);
  f.amx_bf16 = os_amx && bit(l7.d, 22) && bit(l7.d, 24);
  return f;
}
#else
Features detect() {
  Features f;
  f.model = "non-x86 CPU";
  return f;
}
#endif

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

// The oneDNN ISA cap in the environment, upper-cased; "" when unset.
std::string onednn_cap() {
  for (const char* name : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && *v != '\0') return upper(v);
  }
  return "";
}

// MOE_BF16_GEMM, read once: -1 auto, else a Bf16Gemm value.
int env_choice() {
  static const int choice = [] {
    const char* v = std::getenv("MOE_BF16_GEMM");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return -1;
    if (std::strcmp(v, "native") == 0) return static_cast<int>(Bf16Gemm::kNative);
    if (std::strcmp(v, "float32") == 0) return static_cast<int>(Bf16Gemm::kFloat32);
    TORCH_CHECK_VALUE(false, "MOE_BF16_GEMM must be auto, native or float32, got '", v, "'");
    return -1;
  }();
  return choice;
}

std::atomic<int> override_choice{-1};

}  // namespace

const Features& features() {
  static const Features f = detect();
  return f;
}

bool onednn_isa_cap_excludes_bf16() {
  const std::string cap = onednn_cap();
  if (cap.empty() || cap == "ALL") return false;
  // oneDNN's ISA names with bf16 instructions: AVX512_CORE_BF16, AVX512_CORE_FP16,
  // AVX512_CORE_AMX(_FP16), AVX10_*; the older ones (SSE41 .. AVX512_CORE_VNNI) have none.
  for (const char* with_bf16 : {"BF16", "FP16", "AMX", "AVX10"})
    if (cap.find(with_bf16) != std::string::npos) return false;
  return true;
}

Bf16Gemm bf16_gemm() {
  const int forced = override_choice.load(std::memory_order_relaxed);
  if (forced >= 0) return static_cast<Bf16Gemm>(forced);
  const int env = env_choice();
  if (env >= 0) return static_cast<Bf16Gemm>(env);
  const Features& f = features();
  static const bool cap_excludes = onednn_isa_cap_excludes_bf16();
  const bool native = f.avx512 && (f.avx512_bf16 || f.amx_bf16) && !cap_excludes &&
                      at::globalContext().userEnabledMkldnn();
  return native ? Bf16Gemm::kNative : Bf16Gemm::kFloat32;
}

bool bf16_product_native(int64_t m, int64_t n, int64_t k) {
  // In long double: the product of three sizes may overflow int64_t.
  return bf16_gemm() == Bf16Gemm::kNative &&
         static_cast<long double>(m) * n * k >= kSmallestNativeBf16Product;
}

void set_bf16_gemm_override(Bf16Gemm path) { override_choice.store(static_cast<int>(path)); }
void clear_bf16_gemm_override() { override_choice.store(-1); }

const char* to_string(Bf16Gemm path) { return path == Bf16Gemm::kNative ? "native" : "float32"; }

std::string describe() {
  const Features& f = features();
  std::string s = f.model + ";";
  if (f.avx2) s += " avx2";
  if (f.avx512) s += " avx512";
  if (f.avx512_bf16) s += " avx512_bf16";
  if (f.amx_bf16) s += " amx_bf16";
  if (!f.avx2) s += " no-avx2";
  for (const char* cap :
       {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE"}) {
    const char* v = std::getenv(cap);
    if (v != nullptr && *v != '\0') s += std::string("; ") + cap + "=" + v;
  }
  try {
    const Bf16Gemm path = bf16_gemm();
    s += std::string("; bf16 GEMM ") + to_string(path) +
         (path == Bf16Gemm::kNative ? " (oneDNN)" : " (float32 BLAS on bf16 storage)");
  } catch (const c10::Error& e) {  // a malformed MOE_BF16_GEMM: said here, thrown by bf16 products
    s += std::string("; bf16 GEMM: ") + e.what_without_backtrace();
  }
  return s;
}

}  // namespace moe::cpu
