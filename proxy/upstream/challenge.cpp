#include "upstream/challenge.hpp"

namespace berth::upstream {
namespace {

bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
    case '/':
    case ':': return true;
    default: return false;
  }
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

struct cursor {
  std::string_view s;
  std::size_t pos = 0;

  bool done() const { return pos >= s.size(); }
  char peek() const { return done() ? '\0' : s[pos]; }
  void skip_ws() {
    while (!done() && (s[pos] == ' ' || s[pos] == '\t')) ++pos;
  }
  void skip_ws_commas() {
    while (!done() && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == ',')) ++pos;
  }
  std::string_view token() {
    const auto start = pos;
    while (!done() && is_tchar(s[pos]) && s[pos] != '/' && s[pos] != ':') ++pos;
    return s.substr(start, pos - start);
  }
  // A value: a quoted-string or a run of token characters (':' and '/' allowed,
  // as registries send unquoted URLs in the wild).
  std::optional<std::string> value() {
    if (peek() == '"') {
      ++pos;
      std::string out;
      while (!done()) {
        const char c = s[pos++];
        if (c == '\\' && !done()) {
          out.push_back(s[pos++]);
        } else if (c == '"') {
          return out;
        } else {
          out.push_back(c);
        }
      }
      return std::nullopt;  // unterminated quote
    }
    const auto start = pos;
    while (!done() && (is_tchar(s[pos]) || s[pos] == '=')) ++pos;
    return std::string(s.substr(start, pos - start));
  }
};

}  // namespace

std::vector<challenge> parse_challenges(std::string_view header) {
  std::vector<challenge> out;
  cursor c{header};
  while (true) {
    c.skip_ws_commas();
    if (c.done()) break;
    const auto scheme = c.token();
    if (scheme.empty()) break;  // garbage: stop here
    challenge ch;
    ch.scheme = lower(scheme);
    while (true) {
      c.skip_ws();
      const auto save = c.pos;
      const auto name = c.token();
      c.skip_ws();
      if (name.empty() || c.peek() != '=') {
        c.pos = save;  // not a parameter: the next challenge's scheme
        break;
      }
      ++c.pos;
      c.skip_ws();
      auto v = c.value();
      if (!v) {
        out.push_back(std::move(ch));
        return out;
      }
      ch.params[lower(name)] = std::move(*v);
      c.skip_ws();
      if (c.peek() == ',') {
        ++c.pos;
        continue;
      }
      break;
    }
    out.push_back(std::move(ch));
  }
  return out;
}

std::optional<challenge> pick_challenge(const std::vector<std::string>& header_values) {
  std::optional<challenge> basic;
  for (const auto& h : header_values) {
    for (auto& ch : parse_challenges(h)) {
      if (ch.scheme == "bearer" && !ch.param("realm").empty()) return ch;
      if (ch.scheme == "basic" && !basic) basic = std::move(ch);
    }
  }
  return basic;
}

}  // namespace berth::upstream
