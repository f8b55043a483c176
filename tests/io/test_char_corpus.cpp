// The KJV character corpus (include/moe/data/char_corpus.h): parsing `bible` output on fixtures
// (wrapped and unwrapped), the fixed split, loading, and the real export when the package is there.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

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
