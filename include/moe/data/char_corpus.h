// Character-level language-modelling corpora: the King James Bible from the Debian packages
// bible-kjv / bible-kjv-text (exported with the `bible` program, verse numbers stripped), split
// into fixed train / valid / test files.
#pragma once

#include <torch/types.h>

#include <string>

namespace moe::data {

/// The verses of `bible` output, one per line, without chapter headings ("Genesis 1") and verse
/// numbers ("  1 "); a verse wrapped over several lines is joined with single spaces.
std::string verses_from_bible_output(const std::string& text);

struct TextSplits {
  std::string train, valid, test;
};

/// Splits at line boundaries: the first (1 − valid − test) of the characters for training, then
/// valid, then test (the enwik8/text8 convention of contiguous blocks). Each part keeps whole
/// lines.
TextSplits split_text(const std::string& text, double valid_fraction = 0.05,
                      double test_fraction = 0.05);

/// Runs `bible_program` over Genesis 1:1 – Revelation 22:21 and writes train.txt, valid.txt and
/// test.txt into `out_dir` (created if needed). Errors name what is missing and how to install it.
/// Returns the number of verses.
int64_t prepare_kjv(const std::string& out_dir, const std::string& bible_program = "bible");

struct CharCorpus {
  std::string vocab;  ///< the distinct bytes of the training text, sorted; id = position
  torch::Tensor train, valid, test;  ///< int64 ids
};

/// Reads train.txt / valid.txt / test.txt from `dir`. Bytes of valid/test absent from the training
/// vocabulary are an error (the corpus would need an unknown symbol).
CharCorpus load_char_corpus(const std::string& dir);

}  // namespace moe::data
