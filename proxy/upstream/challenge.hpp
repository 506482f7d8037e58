#pragma once
// WWW-Authenticate parsing (RFC 9110 §11.6.1, RFC 2617 quoting): several
// challenges per header, several headers, quoted values with commas and escapes.
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace berth::upstream {

struct challenge {
  std::string scheme;                         // lower-case: "bearer", "basic", ...
  std::map<std::string, std::string> params;  // names lower-case, values unquoted

  std::string param(const std::string& name) const {
    auto it = params.find(name);
    return it == params.end() ? std::string() : it->second;
  }
};

// Parses one header value; malformed trailing parts are dropped.
std::vector<challenge> parse_challenges(std::string_view header);

// The challenge to answer among all headers: Bearer before Basic; nullopt if neither.
std::optional<challenge> pick_challenge(const std::vector<std::string>& header_values);

}  // namespace berth::upstream
