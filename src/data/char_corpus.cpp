// Character corpora (include/moe/data/char_corpus.h).
#include "moe/data/char_corpus.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/run_program.h"

namespace moe::data {
namespace {

namespace fs = std::filesystem;

// "  12 text": leading spaces, digits, one space.
bool split_verse_line(const std::string& line, std::string* text) {
  size_t i = 0;
  while (i < line.size() && line[i] == ' ') ++i;
  if (i == 0) return false;
  const size_t digits = i;
  while (i < line.size() && std::isdigit(static_cast<unsigned char>(line[i]))) ++i;
  if (i == digits || i >= line.size() || line[i] != ' ') return false;
  *text = line.substr(i + 1);
  return true;
}

std::string read_file(const fs::path& p) {
  // A folder opens as a stream on Linux and fails on the first read with the stream library's
  // own words ("basic_filebuf::underflow"), naming no file: say what it is instead.
  std::error_code ec;
  TORCH_CHECK(
      !fs::is_directory(p, ec), "char corpus: ", p.string(),
      " is a folder, expected a text file (prepare the corpus with `moe data kjv --out DIR`)");
  std::ifstream f(p, std::ios::binary);
  TORCH_CHECK(f.good(), "char corpus: cannot read ", p.string(),
              " (prepare it with `moe data kjv --out DIR`)");
  try {
    return std::string(std::istreambuf_iterator<char>(f), {});
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "char corpus: cannot read ", p.string(), ": ", e.what());
  }
  return {};  // not reached
}

void write_file(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
  TORCH_CHECK(f.good(), "char corpus: cannot write ", p.string());
}

torch::Tensor encode(const std::string& text, const std::array<int64_t, 256>& ids,
                     const std::string& what) {
  auto t = at::empty({static_cast<int64_t>(text.size())}, at::TensorOptions().dtype(at::kLong));
  auto* p = t.data_ptr<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    TORCH_CHECK(ids[c] >= 0, "char corpus: ", what, " has byte ", static_cast<int>(c),
                " at offset ", i, " that the training text does not contain");
    p[i] = ids[c];
  }
  return t;
}

}  // namespace

std::string verses_from_bible_output(const std::string& text) {
  // `bible` prints a blank line, the chapter heading ("Genesis 1", "1 Samuel 3"), a blank line,
  // then one "  N text" line per verse, wrapped onto unindented lines at the output width.
  std::istringstream in(text);
  std::string line, verse, out;
  bool open = false, after_blank = true;
  auto flush = [&] {
    if (open) out += verse + "\n";
    open = false;
  };
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string body;
    if (line.empty()) {
      flush();
      after_blank = true;
    } else if (split_verse_line(line, &body)) {
      flush();
      verse = body;
      open = true;
      after_blank = false;
    } else if (after_blank) {
      flush();  // a chapter heading
      after_blank = false;
    } else if (open) {
      verse += " " + line;  // a wrapped continuation
    }
  }
  flush();
  return out;
}

TextSplits split_text(const std::string& text, double valid_fraction, double test_fraction) {
  TORCH_CHECK_VALUE(valid_fraction >= 0 && test_fraction >= 0 && valid_fraction + test_fraction < 1,
                    "split_text: need valid, test >= 0 and valid + test < 1, got ", valid_fraction,
                    " and ", test_fraction);
  const auto n = static_cast<double>(text.size());
  // The first line start at or after a character offset.
  auto boundary = [&](double at) {
    size_t p = static_cast<size_t>(at);
    if (p >= text.size()) return text.size();
    if (p > 0 && text[p - 1] != '\n') {
      const auto nl = text.find('\n', p);
      p = nl == std::string::npos ? text.size() : nl + 1;
    }
    return p;
  };
  const size_t a = boundary(n * (1 - valid_fraction - test_fraction));
  const size_t b = std::max(a, boundary(n * (1 - test_fraction)));
  return {text.substr(0, a), text.substr(a, b - a), text.substr(b)};
}

int64_t prepare_kjv(const std::string& out_dir, const std::string& bible_program) {
  // An argument vector, not a command line: the program's path is never read by a shell.
  const auto r = detail::run_program({bible_program, "-l100000", "gen1:1-rev22:21"});
  const std::string& raw = r.output;
  TORCH_CHECK(r.ok(), "moe data kjv: the bible program '", bible_program, "' ", r.status_text(),
              "; it comes from the Debian packages bible-kjv and bible-kjv-text (`make deps`)",
              raw.empty() ? "" : ". Output: ", raw.substr(0, 200));
  const std::string verses = verses_from_bible_output(raw);
  const auto count = static_cast<int64_t>(std::count(verses.begin(), verses.end(), '\n'));
  TORCH_CHECK(count > 0, "moe data kjv: `", bible_program,
              "` printed no verses: ", raw.substr(0, 200));
  const auto parts = split_text(verses);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  TORCH_CHECK(!ec, "moe data kjv: cannot create ", out_dir, ": ", ec.message());
  write_file(fs::path(out_dir) / "train.txt", parts.train);
  write_file(fs::path(out_dir) / "valid.txt", parts.valid);
  write_file(fs::path(out_dir) / "test.txt", parts.test);
  return count;
}

CharCorpus load_char_corpus(const std::string& dir) {
  const auto train = read_file(fs::path(dir) / "train.txt");
  const auto valid = read_file(fs::path(dir) / "valid.txt");
  const auto test = read_file(fs::path(dir) / "test.txt");
  TORCH_CHECK(!train.empty(), "char corpus: ", dir, "/train.txt is empty");
  std::array<bool, 256> seen{};
  for (char c : train) seen[static_cast<unsigned char>(c)] = true;
  CharCorpus c;
  std::array<int64_t, 256> ids;
  ids.fill(-1);
  for (int b = 0; b < 256; ++b) {
    if (!seen[static_cast<size_t>(b)]) continue;
    ids[static_cast<size_t>(b)] = static_cast<int64_t>(c.vocab.size());
    c.vocab.push_back(static_cast<char>(b));
  }
  c.train = encode(train, ids, dir + "/train.txt");
  c.valid = encode(valid, ids, dir + "/valid.txt");
  c.test = encode(test, ids, dir + "/test.txt");
  return c;
}

}  // namespace moe::data
