// The KJV character corpus (include/moe/data/char_corpus.h): parsing `bible` output on fixtures
// (wrapped and unwrapped), the fixed split, loading, and the real export when the package is there.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "data/run_program.h"
#include "moe/data/char_corpus.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
namespace mt = moe::testing;

// Two chapters as `bible` prints them at a narrow width: headings, verse numbers, wrapped lines.
const char* kFixture =
    "\n"
    "Genesis 1\n"
    "\n"
    "  1 In the beginning God created the heaven and the earth.\n"
    "  2 And the earth was without form, and void; and darkness was upon the face of\n"
    "the deep.\n"
    "\n"
    "1 Samuel 3\n"
    "\n"
    "  10 And the LORD came, and stood.\n"
    "  11 Behold, I will do a thing in Israel, at which both the ears of every one\n"
    "that heareth it shall tingle.\n";

TEST(CharCorpus, StripsHeadingsAndVerseNumbersAndJoinsWrappedLines) {
  EXPECT_EQ(
      moe::data::verses_from_bible_output(kFixture),
      "In the beginning God created the heaven and the earth.\n"
      "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
      "And the LORD came, and stood.\n"
      "Behold, I will do a thing in Israel, at which both the ears of every one that heareth "
      "it shall tingle.\n");
}

TEST(CharCorpus, SplitKeepsWholeLinesInOrder) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += "line " + std::to_string(i) + "\n";
  const auto s = moe::data::split_text(text, 0.1, 0.1);
  EXPECT_EQ(s.train + s.valid + s.test, text);
  for (const auto* part : {&s.train, &s.valid, &s.test}) {
    ASSERT_FALSE(part->empty());
    EXPECT_EQ(part->back(), '\n');
  }
  EXPECT_NEAR(static_cast<double>(s.valid.size()) / text.size(), 0.1, 0.02);
  EXPECT_EQ(s.train.rfind("line 0\n", 0), 0u);
  EXPECT_TRUE(
      mt::throws_with([&] { moe::data::split_text(text, 0.6, 0.5); }, {"valid + test < 1"}));
}

TEST(CharCorpus, LoadsIdsOverTheTrainingVocabularyAndRejectsUnknownBytes) {
  std::string tmpl = (fs::temp_directory_path() / "moe_corpus_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  std::ofstream(dir / "train.txt") << "abca\n";
  std::ofstream(dir / "valid.txt") << "cab\n";
  std::ofstream(dir / "test.txt") << "b\n";
  const auto c = moe::data::load_char_corpus(dir.string());
  EXPECT_EQ(c.vocab, std::string("\nabc"));
  EXPECT_TRUE(torch::equal(c.train, torch::tensor({1, 2, 3, 1, 0}, at::kLong)));
  EXPECT_TRUE(torch::equal(c.valid, torch::tensor({3, 1, 2, 0}, at::kLong)));
  std::ofstream(dir / "test.txt") << "z\n";
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_char_corpus(dir.string()); },
                              {"test.txt", "byte 122", "training text"}));
  fs::remove(dir / "valid.txt");
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_char_corpus(dir.string()); },
                              {"cannot read", "valid.txt", "moe data kjv"}));
  EXPECT_TRUE(
      mt::throws_with([&] { moe::data::prepare_kjv((dir / "out").string(), "/nonexistent/bible"); },
                      {"/nonexistent/bible", "bible-kjv"}));
  fs::remove_all(dir);
}

TEST(CharCorpus, AFileThatIsAFolderIsNamed) {
  std::string tmpl = (fs::temp_directory_path() / "moe_corpus_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  std::ofstream(dir / "valid.txt") << "ab\n";
  std::ofstream(dir / "test.txt") << "ba\n";
  fs::create_directories(dir / "train.txt");
  // was std::ios_base::failure "basic_filebuf::underflow error reading the file: Is a directory"
  EXPECT_TRUE(mt::throws_with([&] { moe::data::load_char_corpus(dir.string()); },
                              {(dir / "train.txt").string(), "is a folder"}));
  fs::remove_all(dir);
}

// The bible program's path goes to the program as one argument, never through a shell.
TEST(CharCorpus, TheBibleProgramIsNotRunThroughAShell) {
  std::string tmpl = (fs::temp_directory_path() / "moe_corpus_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  const std::string bible = "/nonexistent'; touch " + (dir / "marker").string() + "; echo '";
  EXPECT_TRUE(mt::throws_with([&] { moe::data::prepare_kjv((dir / "out").string(), bible); },
                              {bible, "No such file or directory", "bible-kjv"}));
  EXPECT_FALSE(fs::exists(dir / "marker"));
  EXPECT_FALSE(fs::exists(dir / "out"));
  fs::remove_all(dir);
}

TEST(RunProgram, PassesArgumentsVerbatimAndReportsHowItEnded) {
  using moe::detail::run_program;
  auto r = run_program({"/bin/echo", "a b", "c'; touch x; '", "$HOME"});
  EXPECT_TRUE(r.ok()) << r.status_text();
  EXPECT_EQ(r.output, "a b c'; touch x; ' $HOME\n");
  r = run_program({"sh", "-c", "echo out; echo err >&2; exit 3"});  // found in PATH
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.status_text(), "exit status 3");
  EXPECT_EQ(r.output, "out\nerr\n");
  r = run_program({"sh", "-c", "echo out; echo err >&2"}, /*merge_stderr=*/false);
  EXPECT_EQ(r.output, "out\n");
  r = run_program({"sh", "-c", "kill -9 $$"});
  EXPECT_FALSE(r.exited);
  EXPECT_EQ(r.signal, 9);
  EXPECT_NE(r.status_text().find("signal 9"), std::string::npos) << r.status_text();
  r = run_program({"/nonexistent/program"});
  EXPECT_EQ(r.start_error, ENOENT);
  EXPECT_EQ(r.status_text(), "could not start: No such file or directory");
  r = run_program({"moe-no-such-program-in-path"});
  EXPECT_EQ(r.start_error, ENOENT);
  r = run_program({"cat"});  // stdin is /dev/null: does not wait for input
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.output, "");
}

TEST(CharCorpus, ExportsTheWholeKingJamesBible) {
  if (::access("/usr/bin/bible", X_OK) != 0) GTEST_SKIP() << "bible-kjv is not installed";
  std::string tmpl = (fs::temp_directory_path() / "moe_kjv_XXXXXX").string();
  const fs::path dir = ::mkdtemp(tmpl.data());
  EXPECT_EQ(moe::data::prepare_kjv(dir.string()), 31102);  // the verses of the KJV
  const auto c = moe::data::load_char_corpus(dir.string());
  const auto total = c.train.numel() + c.valid.numel() + c.test.numel();
  EXPECT_GT(total, 4000000);
  EXPECT_NEAR(static_cast<double>(c.train.numel()) / total, 0.9, 0.001);
  EXPECT_LT(c.vocab.size(), 100u);
  fs::remove_all(dir);
}

}  // namespace
