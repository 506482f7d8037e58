#include "core/reference.hpp"

namespace berth::core {
namespace {

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool is_lower_hex(char c) {
  return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9');
}

// One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
bool is_valid_component(std::string_view c) {
  std::size_t i = 0;
  const std::size_t n = c.size();
  if (n == 0 || !is_lower_alnum(c[0])) return false;
  while (i < n) {
    while (i < n && is_lower_alnum(c[i])) ++i;
    if (i == n) return true;
    // separator
    if (c[i] == '.') {
      ++i;
    } else if (c[i] == '_') {
      ++i;
      if (i < n && c[i] == '_') ++i;
    } else if (c[i] == '-') {
      while (i < n && c[i] == '-') ++i;
    } else {
      return false;
    }
    if (i == n || !is_lower_alnum(c[i])) return false;
  }
  return true;
}

}  // namespace

bool is_valid_name(std::string_view name) {
  if (name.empty() || name.size() > k_max_name_length) return false;
  std::size_t start = 0;
  while (true) {
    const auto slash = name.find('/', start);
    const auto part = name.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!is_valid_component(part)) return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

bool is_valid_tag(std::string_view tag) {
  if (tag.empty() || tag.size() > k_max_tag_length) return false;
  auto word = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  };
  if (!word(tag[0])) return false;
  for (char c : tag.substr(1)) {
    if (!word(c) && c != '.' && c != '-') return false;
  }
  return true;
}

std::optional<digest> parse_digest(std::string_view text, digest_problem* problem) {
  auto fail = [&](digest_problem p) -> std::optional<digest> {
    if (problem) *problem = p;
    return std::nullopt;
  };
  const auto colon = text.find(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) return fail(digest_problem::malformed);
  const auto algorithm = text.substr(0, colon);
  const auto encoded = text.substr(colon + 1);
  // algorithm ::= component (separator component)*, component ::= [a-z0-9]+, separator ::= [+._-]
  bool need_component = true;
  for (char c : algorithm) {
    if (is_lower_alnum(c)) {
      need_component = false;
    } else if ((c == '+' || c == '.' || c == '_' || c == '-') && !need_component) {
      need_component = true;
    } else {
      return fail(digest_problem::malformed);
    }
  }
  if (need_component) return fail(digest_problem::malformed);
  for (char c : encoded) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '=' || c == '_' || c == '-';
    if (!ok) return fail(digest_problem::malformed);
  }
  std::size_t want = 0;
  if (algorithm == "sha256") {
    want = 64;
  } else if (algorithm == "sha512") {
    want = 128;
  } else {
    return fail(digest_problem::unsupported_algorithm);
  }
  if (encoded.size() != want) return fail(digest_problem::bad_encoding);
  for (char c : encoded) {
    if (!is_lower_hex(c)) return fail(digest_problem::bad_encoding);
  }
  if (problem) *problem = digest_problem::none;
  return digest{std::string(algorithm), std::string(encoded)};
}

}  // namespace berth::core
