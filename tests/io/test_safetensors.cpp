// safetensors files (include/moe/io/safetensors.h): round trips, a file written byte by byte from
// the format description, and every kind of damage the reader must reject with a clear error.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "moe/io/atomic_file.h"
#include "moe/io/safetensors.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "moe_io_XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// A file assembled by hand: u64 little-endian header length, JSON header, data.
std::string hand_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

TEST(Safetensors, RoundTripsEveryDtypeAndTheMetadata) {
  TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> ts = {
      {"a.f64", torch::randn({2, 3}, at::kDouble)},
      {"a.f32", torch::randn({4})},
      {"b.f16", torch::randn({3, 1}).to(at::kHalf)},
      {"b.bf16", torch::randn({5}).to(at::kBFloat16)},
      {"c.i64", torch::arange(6, at::kLong).view({2, 3})},
      {"c.i32", torch::arange(3, at::kInt)},
      {"c.i16", torch::arange(3, at::kShort)},
      {"c.i8", torch::arange(-2, 2, at::kChar)},
      {"c.u8", torch::arange(4, at::kByte)},
      {"d.bool", torch::tensor({true, false, true})},
      {"e.empty", torch::zeros({0, 4})},
      {"f.scalar", torch::tensor(3.5)},
      {"g.strided", torch::randn({4, 6}).t()},  // non-contiguous input
  };
  moe::io::save_safetensors(dir.file("x.safetensors"), ts, {{"step", "12"}, {"note", "héllo"}});
  const auto f = moe::io::load_safetensors(dir.file("x.safetensors"));
  ASSERT_EQ(f.tensors.size(), ts.size());
  for (const auto& [name, t] : ts) {
    const auto got = f.find(name);
    ASSERT_TRUE(got.defined()) << name;
    EXPECT_TRUE(mt::bitwise_equal(got, t.contiguous())) << name;
  }
  EXPECT_EQ(f.metadata.at("step"), "12");
  EXPECT_EQ(f.metadata.at("note"), "héllo");
  // Nothing but the file itself is left in the folder (the temporary file was renamed).
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1);
}

TEST(Safetensors, ReadsAFileWrittenFromTheFormatDescription) {
  TempDir dir;
  // Two float32 values 1.0, -2.0 and one int64 7, with metadata.
  std::string data;
  const float f[2] = {1.0f, -2.0f};
  const int64_t i = 7;
  data.append(reinterpret_cast<const char*>(f), 8);
  data.append(reinterpret_cast<const char*>(&i), 8);
  const std::string header =
      R"({"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("n":{"dtype":"I64","shape":[],"data_offsets":[8,16]}})";
  write_bytes(dir.file("h.safetensors"), hand_file(header, data));
  const auto t = moe::io::load_safetensors(dir.file("h.safetensors"));
  EXPECT_TRUE(torch::equal(t.find("w"), torch::tensor({1.0f, -2.0f})));
  EXPECT_EQ(t.find("n").dim(), 0);
  EXPECT_EQ(t.find("n").item<int64_t>(), 7);
  EXPECT_EQ(t.metadata.at("k"), "v");
  EXPECT_EQ(t.metadata.size(), 1u);  // without checksums (another tool's file): read unchecked
}

// The JSON header of a file.
nlohmann::json header_of(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return nlohmann::json::parse(bytes.substr(8, n));
}

// Tensor data carries a CRC-32C in the metadata: any flipped bit in the data is an error that
// names the tensor, where the file would otherwise load with a wrong weight.
TEST(Safetensors, AFlippedBitInTensorDataIsRejectedNamingTheTensor) {
  TempDir dir;
  const auto path = dir.file("c.safetensors");
  moe::io::save_safetensors(path, {{"a", torch::randn({3})}, {"w", torch::randn({2, 2})}},
                            {{"step", "3"}});
  const auto bytes = read_bytes(path);
  const size_t data = bytes.size() - 28;  // a: 12 bytes, then w: 16
  for (size_t i = data; i < bytes.size(); ++i) {
    auto damaged = bytes;
    damaged[i] ^= static_cast<char>(1 << (i % 8));
    write_bytes(path, damaged);
    const char* tensor = i < data + 12 ? "'a'" : "'w'";
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(path); },
                                {path, tensor, "corrupted", "CRC-32C"}))
        << "byte " << i - data << " of the data";
  }
}

// The checksums are "moe.crc32c.<tensor>" metadata (docs/cli.md): written for every tensor, hidden
// from the caller's metadata, checked for form and consistency, and reserved for the writer.
TEST(Safetensors, ChecksumMetadataIsCheckedAndReserved) {
  TempDir dir;
  const auto path = dir.file("m.safetensors");
  const auto w = torch::tensor({1.0f, -2.0f});
  moe::io::save_safetensors(path, {{"w", w}, {"e", torch::zeros({0})}}, {{"k", "v"}});
  const auto header = header_of(read_bytes(path));
  EXPECT_EQ(header.at("__metadata__").at("moe.crc32c.w"), "aa36f2c9");
  EXPECT_EQ(header.at("__metadata__").at("moe.crc32c.e"), "00000000");
  const auto f = moe::io::load_safetensors(path);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"k", "v"}}));

  std::string data(reinterpret_cast<const char*>(w.data_ptr<float>()), 8);
  const std::string t = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {R"({"__metadata__":{"moe.crc32c.w":"xyz"},)" + t + "}", {"moe.crc32c.w", "'xyz'", "hex"}},
      {R"({"__metadata__":{"moe.crc32c.w":"aa36f2c9","moe.crc32c.v":"00000000"},)" + t + "}",
       {"moe.crc32c.v", "does not have"}},
      {R"({"__metadata__":{"moe.crc32c.w":"aa36f2c9"},)" + t +
           R"(,"z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
       {"'z'", "no checksum"}},
      {R"({"__metadata__":{"moe.crc32c.w":"aa36f2c8"},)" + t + "}",
       {"'w'", "corrupted", "aa36f2c9", "aa36f2c8"}},
  };
  for (const auto& [h, parts] : cases) {
    write_bytes(path, hand_file(h, data));
    auto expect = parts;
    expect.push_back(path);
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(path); }, expect)) << h;
  }
  write_bytes(path, hand_file(R"({"__metadata__":{"moe.crc32c.w":"AA36F2C9"},)" + t + "}", data));
  EXPECT_TRUE(torch::equal(moe::io::load_safetensors(path).find("w"), w));  // either case
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_safetensors(path, {{"w", w}}, {{"moe.crc32c.w", "00000000"}});
      },
      {"moe.crc32c.w", "reserved"}));
}

struct Damage {
  const char* what;
  std::string header;
  std::string data;
  const char* expect;
};

TEST(Safetensors, RejectsMalformedHeadersWithClearErrors) {
  TempDir dir;
  const std::string d16(16, '\0');
  const std::vector<Damage> cases = {
      {"not json", "{\"w\":", d16, "not valid JSON"},
      {"not an object", "[1,2]", d16, "not a JSON object"},
      {"unknown dtype", R"({"w":{"dtype":"F8","shape":[4],"data_offsets":[0,16]}})", d16,
       "unknown dtype"},
      {"negative dim", R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", d16,
       "invalid dimension"},
      {"missing field", R"({"w":{"dtype":"F32","shape":[4]}})", d16, "data_offsets"},
      {"size mismatch", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16,
       "needs 12 bytes"},
      {"out of range", R"({"w":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d16,
       "outside the data buffer"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       d16, "overlaps"},
      {"hole", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", d16, "hole"},
      {"trailing bytes", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", d16,
       "not covered"},
      {"bad metadata", R"({"__metadata__":{"k":3}})", "", "not a string"},
      {"huge shape",
       R"({"w":{"dtype":"F64","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,16]}})",
       d16, "overflows"},
  };
  for (const auto& c : cases) {
    const auto path = dir.file("bad.safetensors");
    write_bytes(path, hand_file(c.header, c.data));
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(path); }, {path, c.expect}))
        << c.what;
  }
  // BOOL bytes other than 0/1; a deeply nested dtype is reported, not serialised recursively.
  write_bytes(dir.file("b.safetensors"),
              hand_file(R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
                        std::string("\x01\x02", 2)));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(dir.file("b.safetensors")); },
                              {"BOOL", "0 and 1"}));
  const std::string deep = std::string(20000, '[') + std::string(20000, ']');
  write_bytes(dir.file("d.safetensors"),
              hand_file(R"({"w":{"dtype":)" + deep + R"(,"shape":[0],"data_offsets":[0,0]}})", ""));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(dir.file("d.safetensors")); },
                              {"unknown dtype", "array"}));
  // A header length larger than the file, and one beyond the 100 MB limit.
  std::string big(8, '\xff');
  write_bytes(dir.file("len.safetensors"), big + "{}");
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(dir.file("len.safetensors")); },
                              {"header length", "exceeds"}));
  EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(dir.file("missing.safetensors")); },
                              {"cannot open", "missing.safetensors"}));
}

TEST(Safetensors, AnEmptyTensorMayShareItsOffsetWithTheNext) {
  TempDir dir;
  const float f[2] = {1.0f, 2.0f};
  // The empty tensor is listed after the one it shares offset 0 with.
  write_bytes(dir.file("e.safetensors"),
              hand_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}})",
                        std::string(reinterpret_cast<const char*>(f), 8)));
  const auto t = moe::io::load_safetensors(dir.file("e.safetensors"));
  EXPECT_EQ(t.find("e").sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(torch::equal(t.find("w"), torch::tensor({1.0f, 2.0f})));
}

TEST(Safetensors, EveryTruncationOfAValidFileIsRejected) {
  TempDir dir;
  moe::io::save_safetensors(dir.file("ok.safetensors"),
                            {{"w", torch::randn({3, 5})}, {"b", torch::arange(4, at::kLong)}},
                            {{"k", "v"}});
  const auto bytes = read_bytes(dir.file("ok.safetensors"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    const auto path = dir.file("cut.safetensors");
    write_bytes(path, bytes.substr(0, n));
    EXPECT_TRUE(mt::throws_with([&] { moe::io::load_safetensors(path); }, {path})) << n;
  }
}

TEST(Safetensors, RandomByteFlipsNeverCrashTheReader) {
  TempDir dir;
  moe::io::save_safetensors(dir.file("ok.safetensors"), {{"w", torch::randn({4, 4})}});
  const auto bytes = read_bytes(dir.file("ok.safetensors"));
  torch::manual_seed(0);
  for (int trial = 0; trial < 300; ++trial) {
    auto damaged = bytes;
    const auto pos = torch::randint(0, 8 + 90, {1}).item<int64_t>();  // the length and the header
    damaged[static_cast<size_t>(std::min<int64_t>(pos, damaged.size() - 1))] ^=
        static_cast<char>(1 + torch::randint(0, 255, {1}).item<int64_t>());
    write_bytes(dir.file("flip.safetensors"), damaged);
    try {
      moe::io::load_safetensors(dir.file("flip.safetensors"));  // may still be valid
    } catch (const c10::Error&) {
    }
  }
}

TEST(Safetensors, WriterRejectsBadInput) {
  TempDir dir;
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_safetensors(dir.file("a"), {{"w", torch::ones(2)}, {"w", torch::ones(2)}});
      },
      {"duplicate", "'w'"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_safetensors(dir.file("a"), {{"__metadata__", torch::ones(2)}});
      },
      {"invalid name"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_safetensors(dir.file("a"), {{"c", torch::ones(2, at::kComplexFloat)}});
      },
      {"'c'", "cannot store"}));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::io::save_safetensors("/nonexistent-dir/x.safetensors", {{"w", torch::ones(2)}});
      },
      {"/nonexistent-dir/x.safetensors"}));
  EXPECT_FALSE(fs::exists(dir.file("a")));
}

constexpr const char* kWriterEnv = "MOE_SAFETENSORS_WRITER_PATH";

// Runs only as the child of the test below: rewrites the file forever, generation after generation.
// The temporary file starts as 0600 (mkstemp); the result must have the mode the file had, or the
// mode a new file gets under the process umask.
TEST(AtomicFile, KeepsTheModeOrFollowsTheUmask) {
  moe::testing::TempDir dir;
  const auto path = (dir.path / "f.txt").string();
  const mode_t old_mask = ::umask(027);
  moe::io::write_file_atomically(path, std::string("one"));
  ::umask(old_mask);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  moe::io::write_file_atomically(path, std::string("two"));
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  std::ifstream f(path);
  std::string text;
  f >> text;
  EXPECT_EQ(text, "two");
}

TEST(Safetensors, WriterChild) {
  const char* path = std::getenv(kWriterEnv);
  if (path == nullptr) GTEST_SKIP() << "runs as the child process of AKilledWriter...";
  for (int g = 1;; ++g) {
    moe::io::save_safetensors(path, {{"w", torch::full({1 << 20}, static_cast<float>(g))}},
                              {{"generation", std::to_string(g)}});
  }
}

// A writer killed at a random moment (SIGKILL: no cleanup) leaves the last complete file intact:
// the path always holds a valid file whose data matches its generation.
TEST(Safetensors, AKilledWriterNeverCorruptsTheLastGoodFile) {
  if (std::getenv(kWriterEnv) != nullptr) GTEST_SKIP() << "parent test";
  TempDir dir;
  const auto path = dir.file("ckpt.safetensors");
  moe::io::save_safetensors(path, {{"w", torch::zeros({1 << 20})}}, {{"generation", "0"}});
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  std::mt19937 rng(7);
  int newer = 0;
  for (int trial = 0; trial < 12; ++trial) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::setenv(kWriterEnv, path.c_str(), 1);
      const std::string filter = "--gtest_filter=Safetensors.WriterChild";
      ::execl(self.c_str(), self.c_str(), filter.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Let the child start (it loads LibTorch) and write for a while, then kill it mid-stream.
    ::usleep(static_cast<useconds_t>(400000 + std::uniform_int_distribution<int>(0, 200000)(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the writer exited by itself, status " << status;
    const auto f = moe::io::load_safetensors(path);  // must not throw
    const int g = std::stoi(f.metadata.at("generation"));
    newer += g > 0;
    const auto w = f.find("w");
    ASSERT_EQ(w.numel(), 1 << 20);
    EXPECT_TRUE(torch::equal(w, torch::full({1 << 20}, static_cast<float>(g))))
        << "generation " << g;
  }
  EXPECT_GT(newer, 0) << "the writer never completed a file: the test did not exercise anything";
}

}  // namespace
