// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF),
// the checksum of the tensors in the safetensors files this library writes and of the records of
// TensorBoard event files. x86-64 processors with SSE4.2 compute it with the `crc32` instruction
// (8 bytes an instruction); other processors use slicing-by-8 tables. Both give the same
// result (tests/io/test_crc32c.cpp). The implementation is in src/io/crc32c.cpp, so that the tables
// and <nmmintrin.h> stay out of the headers of the library's users.
#pragma once

#include <cstddef>
#include <cstdint>

// Whether this build has the SSE4.2 path (which still runs only where the processor has it).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MOE_CRC32C_SSE42 1
#else
#define MOE_CRC32C_SSE42 0
#endif

namespace moe::io {

/// The CRC-32C of `n` bytes. `crc` continues an earlier result over the bytes that follow it:
/// crc32c(b, m, crc32c(a, n)) is the CRC of a followed by b.
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// The two paths crc32c() chooses between, declared so that the tests can compare them.
namespace detail {

/// Slicing-by-8 on the raw register `c` (not inverted here).
uint32_t crc32c_by_table(uint32_t c, const void* data, size_t n);

#if MOE_CRC32C_SSE42
/// The `crc32` instruction on the raw register `c`; call only where crc32c_has_sse42().
__attribute__((target("sse4.2"))) uint32_t crc32c_by_sse42(uint32_t c, const void* data, size_t n);
#endif

/// Whether this processor has the `crc32` instruction (checked once).
bool crc32c_has_sse42();

}  // namespace detail
}  // namespace moe::io
