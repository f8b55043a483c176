// CRC-32C (include/moe/io/crc32c.h): slicing-by-8 tables, and the SSE4.2 `crc32` instruction
// chosen at run time where the processor has it.
#include "moe/io/crc32c.h"

#include <cstring>

#if MOE_CRC32C_SSE42
#include <nmmintrin.h>
#endif

namespace moe::io {
namespace detail {
namespace {

struct Crc32cTables {
  uint32_t t[8][256];  // t[k][b]: the CRC of byte b followed by k zero bytes
};

const Crc32cTables& crc32c_tables() {
  static const Crc32cTables tables = [] {
    Crc32cTables s{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      s.t[0][i] = c;
    }
    for (int k = 1; k < 8; ++k)
      for (uint32_t i = 0; i < 256; ++i)
        s.t[k][i] = (s.t[k - 1][i] >> 8) ^ s.t[0][s.t[k - 1][i] & 0xff];
    return s;
  }();
  return tables;
}

}  // namespace

uint32_t crc32c_by_table(uint32_t c, const void* data, size_t n) {
  const auto& t = crc32c_tables().t;
  const auto* p = static_cast<const unsigned char*>(data);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // the low byte of w is p[0]
    w ^= c;
    c = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
        t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
  }
#endif
  for (; n > 0; ++p, --n) c = t[0][(c ^ *p) & 0xff] ^ (c >> 8);
  return c;
}

#if MOE_CRC32C_SSE42
__attribute__((target("sse4.2"))) uint32_t crc32c_by_sse42(uint32_t c, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t c64 = c;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c64 = _mm_crc32_u64(c64, w);
  }
  auto c32 = static_cast<uint32_t>(c64);
  for (; n > 0; ++p, --n) c32 = _mm_crc32_u8(c32, *p);
  return c32;
}
#endif

bool crc32c_has_sse42() {
#if MOE_CRC32C_SSE42
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
#else
  return false;
#endif
}

}  // namespace detail

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  uint32_t c = ~crc;
#if MOE_CRC32C_SSE42
  if (detail::crc32c_has_sse42()) return ~detail::crc32c_by_sse42(c, data, n);
#endif
  return ~detail::crc32c_by_table(c, data, n);
}

}  // namespace moe::io
