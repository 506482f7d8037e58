// An upstream's WWW-Authenticate header(s).
#include <string>
#include <vector>

#include "fuzz.hpp"
#include "upstream/challenge.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace berth;
  const auto in = fuzz::text(data, size);
  (void)upstream::parse_challenges(in);
  // Several header lines: split the input at newlines.
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start <= in.size()) {
    const auto nl = in.find('\n', start);
    lines.emplace_back(in.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start));
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  (void)upstream::pick_challenge(lines);
  return 0;
}
