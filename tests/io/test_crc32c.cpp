// CRC-32C (include/moe/io/crc32c.h): the published check values, the same result from the SSE4.2
// instruction and from the slicing-by-8 tables at every length and alignment, and continuation.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "moe/io/crc32c.h"

namespace {

using moe::io::crc32c;

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the CRC-32C check value
  EXPECT_EQ(crc32c("", 0), 0u);
  // RFC 3720 (iSCSI), appendix B.4
  std::vector<uint8_t> b(32, 0);
  EXPECT_EQ(crc32c(b.data(), b.size()), 0x8A9136AAu);
  std::fill(b.begin(), b.end(), 0xff);
  EXPECT_EQ(crc32c(b.data(), b.size()), 0x62A8AB43u);
  for (int i = 0; i < 32; ++i) b[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(b.data(), b.size()), 0x46DD794Eu);
  for (int i = 0; i < 32; ++i) b[i] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(crc32c(b.data(), b.size()), 0x113FDB5Cu);
}

// The register-level paths, without the final inversion of crc32c().
uint32_t by_table(const void* p, size_t n) { return ~moe::io::detail::crc32c_by_table(~0u, p, n); }

// Bit by bit, straight from the definition: the reference for both fast paths.
uint32_t bitwise(const uint8_t* p, size_t n) {
  uint32_t c = ~0u;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
  }
  return ~c;
}

TEST(Crc32c, TablesAndInstructionAgreeAtEveryLengthAndAlignment) {
  std::mt19937 rng(3);
  std::vector<uint8_t> buf(4096 + 64);
  for (auto& v : buf) v = static_cast<uint8_t>(rng());
  for (size_t offset = 0; offset < 8; ++offset)
    for (size_t n = 0; n <= 80; ++n) {
      const uint8_t* p = buf.data() + offset;
      const uint32_t expect = bitwise(p, n);
      ASSERT_EQ(by_table(p, n), expect) << offset << " " << n;
      ASSERT_EQ(crc32c(p, n), expect) << offset << " " << n;
#if MOE_CRC32C_SSE42
      if (moe::io::detail::crc32c_has_sse42()) {
        ASSERT_EQ(~moe::io::detail::crc32c_by_sse42(~0u, p, n), expect) << offset << " " << n;
      }
#endif
    }
  EXPECT_EQ(by_table(buf.data() + 3, 4096), bitwise(buf.data() + 3, 4096));
  EXPECT_EQ(crc32c(buf.data() + 3, 4096), bitwise(buf.data() + 3, 4096));
}

// The instruction path above is compared only where it exists; say so where it does not.
TEST(Crc32c, InstructionPathIsCheckedWhereTheCpuHasIt) {
#if MOE_CRC32C_SSE42
  if (!moe::io::detail::crc32c_has_sse42())
    GTEST_SKIP() << "this CPU has no SSE4.2 crc32 instruction: only the tables were checked";
  const std::string s = "123456789";
  EXPECT_EQ(~moe::io::detail::crc32c_by_sse42(~0u, s.data(), s.size()), 0xE3069283u);
#else
  GTEST_SKIP() << "built without the SSE4.2 path (not x86-64): only the tables were checked";
#endif
}

TEST(Crc32c, ContinuesAnEarlierResult) {
  const std::string s = "The quick brown fox jumps over the lazy dog, twice over.";
  const uint32_t whole = crc32c(s.data(), s.size());
  for (size_t cut = 0; cut <= s.size(); ++cut)
    EXPECT_EQ(crc32c(s.data() + cut, s.size() - cut, crc32c(s.data(), cut)), whole) << cut;
}

}  // namespace
