// safetensors reader and atomic writer (include/moe/io/safetensors.h).
#include "moe/io/safetensors.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "moe/io/atomic_file.h"
#include "moe/io/crc32c.h"

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

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

// A checksum value: exactly 8 hex digits.
bool parse_hex32(const std::string& s, uint32_t* v) {
  if (s.size() != 8 || s.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
    return false;
  *v = static_cast<uint32_t>(std::stoul(s, nullptr, 16));
  return true;
}

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
  for (const auto& [k, v] : metadata)
    TORCH_CHECK_VALUE(k.compare(0, std::strlen(kChecksumPrefix), kChecksumPrefix) != 0,
                      "save_safetensors: ", path, ": metadata key '", k,
                      "' is reserved (keys starting with '", kChecksumPrefix,
                      "' hold the tensors' checksums)");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = nullptr;  // first in the header, filled in below
  std::map<std::string, std::string> meta = metadata;
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
    meta[kChecksumPrefix + name] = hex32(crc32c(c.data_ptr(), c.nbytes()));
    header[name] = {
        {"dtype", dtype}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(c));
  }
  if (meta.empty())
    header.erase("__metadata__");
  else
    header["__metadata__"] = meta;
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

namespace {

struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

template <typename... Args>
[[noreturn]] void fail(const std::string& path, const Args&... what) {
  TORCH_CHECK_VALUE(false, "load_safetensors: ", path, ": ", what...);
  std::abort();  // not reached
}

// One tensor's header entry, checked against the size of the data buffer.
Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& v,
                  uint64_t buffer) {
  if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
    fail(path, "tensor '", name, "' needs dtype, shape and data_offsets");
  Entry e{name, at::kByte, {}, 0, 0};
  const auto& dt = v["dtype"];
  bool known = false;
  if (dt.is_string()) {
    for (const auto& d : kDtypes)
      if (dt.get<std::string>() == d.name) e.dtype = d.type, known = true;
  }
  if (!known)
    fail(path, "tensor '", name, "' has an unknown dtype ",
         dt.is_string() ? dt.get<std::string>() : std::string("of JSON type ") + dt.type_name());
  const auto& shape = v["shape"];
  if (!shape.is_array()) fail(path, "tensor '", name, "' has a shape that is not an array");
  uint64_t numel = 1;
  for (const auto& s : shape) {
    if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t{1} << 62))
      fail(path, "tensor '", name, "' has an invalid dimension ",
           s.is_number() ? s.dump() : std::string("of JSON type ") + s.type_name());
    const auto dim = s.get<uint64_t>();
    if (__builtin_mul_overflow(numel, dim, &numel))
      fail(path, "tensor '", name, "' has a shape whose size overflows");
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  const auto& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned())
    fail(path, "tensor '", name, "' needs data_offsets [begin, end] of non-negative integers");
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  if (e.begin > e.end || e.end > buffer)
    fail(path, "tensor '", name, "' has data_offsets [", e.begin, ", ", e.end,
         "] outside the data buffer of ", buffer, " bytes (truncated or corrupted)");
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(e.dtype)), &bytes) ||
      bytes != e.end - e.begin)
    fail(path, "tensor '", name, "': shape ", c10::IntArrayRef(e.shape), " of ",
         dt.get<std::string>(), " needs ", bytes, " bytes but data_offsets span ", e.end - e.begin);
  return e;
}

// Sorts the entries by offset and checks that they tile the buffer: no overlap, no hole.
void check_layout(const std::string& path, std::vector<Entry>* entries, uint64_t buffer) {
  std::sort(entries->begin(), entries->end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;  // empty tensors first
  });
  uint64_t expect = 0;
  for (const auto& e : *entries) {
    if (e.begin < expect) fail(path, "tensor '", e.name, "' overlaps the previous tensor");
    if (e.begin > expect) fail(path, "the data buffer has a hole before tensor '", e.name, "'");
    expect = e.end;
  }
  if (expect != buffer)
    fail(path, "the data buffer has ", buffer - expect, " bytes not covered by any tensor");
}

// The checksums save_safetensors writes, by tensor name, taken out of the metadata the caller
// sees. A file without any (written by another tool) is read unchecked; a file with some needs one
// for every tensor and none for anything else, so that damage to the header cannot silently turn
// a check off.
std::map<std::string, uint32_t> take_checksums(const std::string& path,
                                               std::map<std::string, std::string>* meta,
                                               const std::vector<Entry>& entries) {
  const std::string prefix = kChecksumPrefix;
  std::map<std::string, uint32_t> out;
  for (auto it = meta->lower_bound(prefix);
       it != meta->end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
    uint32_t v = 0;
    if (!parse_hex32(it->second, &v))
      fail(path, "metadata ", it->first, " = '", it->second,
           "': expected a CRC-32C of 8 hex digits");
    out[it->first.substr(prefix.size())] = v;
    it = meta->erase(it);
  }
  if (out.empty()) return out;
  std::set<std::string> names;
  for (const auto& e : entries) {
    names.insert(e.name);
    if (out.count(e.name) == 0)
      fail(path, "tensor '", e.name, "' has no checksum (", prefix, e.name,
           ") although the file records checksums of other tensors (a damaged header?)");
  }
  for (const auto& [name, v] : out)
    if (names.count(name) == 0)
      fail(path, "metadata ", prefix, name, " is the checksum of a tensor the file does not have");
  return out;
}

}  // namespace

TensorFile load_safetensors(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  TORCH_CHECK(file != nullptr, "load_safetensors: cannot open ", path, ": ", os_error());
  struct stat st {};
  TORCH_CHECK(::fstat(::fileno(file.get()), &st) == 0, "load_safetensors: cannot stat ", path, ": ",
              os_error());
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8)
    fail(path, "file of ", size, " bytes is too short for a safetensors header (truncated?)");
  uint64_t n = 0;
  if (std::fread(&n, 8, 1, file.get()) != 1) fail(path, "cannot read the header length");
  if (n > kMaxHeaderBytes)
    fail(path, "header length ", n, " exceeds the limit of ", kMaxHeaderBytes);
  if (n > size - 8)
    fail(path, "header length ", n, " exceeds the file size ", size, " (truncated or corrupted)");
  std::string text(n, '\0');
  if (n > 0 && std::fread(text.data(), 1, n, file.get()) != n) fail(path, "cannot read the header");
  const uint64_t buffer = size - 8 - n;

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, "the header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail(path, "the header is not a JSON object");

  std::vector<Entry> entries;
  TensorFile out;
  for (const auto& [name, v] : header.items()) {
    if (name != "__metadata__") {
      entries.push_back(parse_entry(path, name, v, buffer));
      continue;
    }
    if (!v.is_object()) fail(path, "__metadata__ is not an object");
    for (const auto& [k, s] : v.items()) {
      if (!s.is_string()) fail(path, "__metadata__ value of '", k, "' is not a string");
      out.metadata[k] = s.get<std::string>();
    }
  }
  check_layout(path, &entries, buffer);
  const auto checksums = take_checksums(path, &out.metadata, entries);

  for (const auto& e : entries) {
    auto t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
    const size_t bytes = e.end - e.begin;
    if (bytes > 0) {
      if (std::fseek(file.get(), static_cast<long>(8 + n + e.begin), SEEK_SET) != 0 ||
          std::fread(t.data_ptr(), 1, bytes, file.get()) != bytes)
        fail(path, "cannot read the data of tensor '", e.name, "' (truncated?)");
    }
    if (const auto it = checksums.find(e.name); it != checksums.end()) {
      const uint32_t got = crc32c(t.data_ptr(), bytes);
      if (got != it->second)
        fail(path, "tensor '", e.name, "' is corrupted: the CRC-32C of its ", bytes, " bytes is ",
             hex32(got), " but the file records ", hex32(it->second), " (", kChecksumPrefix, e.name,
             ")");
    }
    if (e.dtype == at::kBool && bytes > 0 && t.view(at::kByte).max().item<uint8_t>() > 1)
      fail(path, "tensor '", e.name, "' is BOOL but holds bytes other than 0 and 1");
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace moe::io
