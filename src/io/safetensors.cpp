// safetensors reader and atomic writer (include/moe/io/safetensors.h).
#include "moe/io/safetensors.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "moe/io/atomic_file.h"

namespace moe::io {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the limit of the reference implementation

struct DtypeName {
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"},  {at::kBFloat16, "BF16"},
    {at::kLong, "I64"},   {at::kInt, "I32"},   {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},    {at::kBool, "BOOL"},
};

std::string os_error() { return std::strerror(errno); }

const char* dtype_name(at::ScalarType t, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  TORCH_CHECK_TYPE(false, "save_safetensors: tensor '", tensor, "' has dtype ", t,
                   ", which safetensors cannot store");
}

}  // namespace

torch::Tensor TensorFile::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  return {};
}

void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(!name.empty() && name != "__metadata__", "save_safetensors: invalid name '",
                      name, "'");
    TORCH_CHECK_VALUE(names.insert(name).second, "save_safetensors: duplicate tensor name '", name,
                      "'");
    TORCH_CHECK_VALUE(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    const char* dtype = dtype_name(t.scalar_type(), name);
    auto c = t.detach().to(at::kCPU).contiguous();
    const auto bytes = static_cast<uint64_t>(c.nbytes());
    header[name] = {
        {"dtype", dtype}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name or value that is not UTF-8
    TORCH_CHECK_VALUE(false, "save_safetensors: ", path, ": cannot encode the header (", e.what(),
                      "); names and metadata must be UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the byte buffer 8-byte aligned
  const uint64_t n = text.size();

  std::vector<std::pair<const void*, size_t>> chunks{{&n, sizeof(n)}, {text.data(), text.size()}};
  for (const auto& c : data) chunks.emplace_back(c.data_ptr(), c.nbytes());
  write_file_atomically(path, chunks, "save_safetensors");
}

TensorFile load_safetensors(const std::string& path) {
  auto fail = [&](const auto&... what) -> void {
    TORCH_CHECK_VALUE(false, "load_safetensors: ", path, ": ", what...);
  };
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  TORCH_CHECK(file != nullptr, "load_safetensors: cannot open ", path, ": ", os_error());
  struct stat st {};
  TORCH_CHECK(::fstat(::fileno(file.get()), &st) == 0, "load_safetensors: cannot stat ", path, ": ",
              os_error());
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) fail("file of ", size, " bytes is too short for a safetensors header (truncated?)");
  uint64_t n = 0;
  if (std::fread(&n, 8, 1, file.get()) != 1) fail("cannot read the header length");
  if (n > kMaxHeaderBytes) fail("header length ", n, " exceeds the limit of ", kMaxHeaderBytes);
  if (n > size - 8)
    fail("header length ", n, " exceeds the file size ", size, " (truncated or corrupted)");
  std::string text(n, '\0');
  if (n > 0 && std::fread(text.data(), 1, n, file.get()) != n) fail("cannot read the header");
  const uint64_t buffer = size - 8 - n;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("the header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail("the header is not a JSON object");

  struct Entry {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  TensorFile out;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object");
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) fail("__metadata__ value of '", k, "' is not a string");
        out.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      fail("tensor '", name, "' needs dtype, shape and data_offsets");
    Entry e{name, at::kByte, {}, 0, 0};
    const auto& dt = v["dtype"];
    bool known = false;
    if (dt.is_string()) {
      for (const auto& d : kDtypes)
        if (dt.get<std::string>() == d.name) e.dtype = d.type, known = true;
    }
    if (!known)
      fail("tensor '", name, "' has an unknown dtype ",
           dt.is_string() ? dt.get<std::string>() : std::string("of JSON type ") + dt.type_name());
    const auto& shape = v["shape"];
    if (!shape.is_array()) fail("tensor '", name, "' has a shape that is not an array");
    uint64_t numel = 1;
    for (const auto& s : shape) {
      if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t{1} << 62))
        fail("tensor '", name, "' has an invalid dimension ",
             s.is_number() ? s.dump() : std::string("of JSON type ") + s.type_name());
      const auto dim = s.get<uint64_t>();
      if (__builtin_mul_overflow(numel, dim, &numel))
        fail("tensor '", name, "' has a shape whose size overflows");
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail("tensor '", name, "' needs data_offsets [begin, end] of non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > buffer)
      fail("tensor '", name, "' has data_offsets [", e.begin, ", ", e.end,
           "] outside the data buffer of ", buffer, " bytes (truncated or corrupted)");
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(e.dtype)), &bytes) ||
        bytes != e.end - e.begin)
      fail("tensor '", name, "': shape ", c10::IntArrayRef(e.shape), " of ", dt.get<std::string>(),
           " needs ", bytes, " bytes but data_offsets span ", e.end - e.begin);
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;  // empty tensors first
  });
  uint64_t expect = 0;
  for (const auto& e : entries) {
    if (e.begin < expect) fail("tensor '", e.name, "' overlaps the previous tensor");
    if (e.begin > expect) fail("the data buffer has a hole before tensor '", e.name, "'");
    expect = e.end;
  }
  if (expect != buffer)
    fail("the data buffer has ", buffer - expect, " bytes not covered by any tensor");

  for (const auto& e : entries) {
    auto t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    const size_t bytes = e.end - e.begin;
    if (bytes > 0) {
      if (std::fseek(file.get(), static_cast<long>(8 + n + e.begin), SEEK_SET) != 0 ||
          std::fread(t.data_ptr(), 1, bytes, file.get()) != bytes)
        fail("cannot read the data of tensor '", e.name, "' (truncated?)");
    }
    if (e.dtype == at::kBool && bytes > 0 && t.view(at::kByte).max().item<uint8_t>() > 1)
      fail("tensor '", e.name, "' is BOOL but holds bytes other than 0 and 1");
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace moe::io
