// Helpers shared by the tests of the `moe` command and its trainer (tests/cli/*.cpp).
#pragma once

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace moe::testing {

/// Writes a learnable character corpus to `dir` (created if missing): 80,000 characters of
/// sentences from a small grammar (fixed seed), split by lines 90/5/5 into train.txt, valid.txt and
/// test.txt, the layout of `moe data kjv` (docs/cli.md).
inline void write_corpus(const std::filesystem::path& dir) {
  const std::vector<std::string> subjects = {"the king", "a shepherd", "his servant", "the people",
                                             "my brother"},
                                 verbs = {"went unto", "spake to", "looked upon", "gave bread to",
                                          "blessed"},
                                 objects = {"the city.", "the house of god.", "his father.",
                                            "the children.", "the river."};
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < 80000) {
    text += subjects[rng() % subjects.size()] + " " + verbs[rng() % verbs.size()] + " " +
            objects[rng() % objects.size()] + "\n";
  }
  std::filesystem::create_directories(dir);
  const size_t a = text.find('\n', text.size() * 9 / 10) + 1,
               b = text.find('\n', text.size() * 95 / 100) + 1;
  std::ofstream(dir / "train.txt") << text.substr(0, a);
  std::ofstream(dir / "valid.txt") << text.substr(a, b - a);
  std::ofstream(dir / "test.txt") << text.substr(b);
}

/// The records of RUN_DIR/metrics.jsonl, one JSON object per line.
inline std::vector<nlohmann::json> read_metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

}  // namespace moe::testing
