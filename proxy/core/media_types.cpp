#include "core/media_types.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include "core/hasher.hpp"
#include "core/headers.hpp"

namespace berth::core::media_type {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

struct named {
  std::string_view type;
  accept_class bit;
};
constexpr named k_types[] = {{docker_manifest, accepts_docker_manifest},
                             {docker_list, accepts_docker_list},
                             {oci_manifest, accepts_oci_manifest},
                             {oci_index, accepts_oci_index}};

}  // namespace

accept_class classify_accept(std::string_view accept) {
  accept_class c = 0;
  while (!accept.empty()) {
    const auto comma = accept.find(',');
    auto range = accept.substr(0, comma);
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);
    // Parameters, q included, are ignored: the registry ignores them too (a type
    // named with q=0 still gets that type), and the answer must be the registry's.
    const auto type = trim(range.substr(0, range.find(';')));
    if (type == "*/*" || iequals(type, "application/*")) {
      c |= accepts_wildcard;
      continue;
    }
    for (const auto& t : k_types) {
      if (iequals(type, t.type)) c |= t.bit;
    }
  }
  return c;
}

std::string accept_for(accept_class c) {
  std::string out;
  for (const auto& t : k_types) {
    if (c & t.bit) out += (out.empty() ? "" : ", ") + std::string(t.type);
  }
  if (c & accepts_wildcard) out += out.empty() ? "*/*" : ", */*";
  return out;
}

bool class_accepts(accept_class c, std::string_view type) {
  for (const auto& t : k_types) {
    // Named, or not at all: the registry gives none of the four to a wildcard (a lone
    // */* gets 404 for an OCI index or manifest, by tag and by digest).
    if (iequals(type, t.type)) return (c & t.bit) != 0;
  }
  return (c & accepts_wildcard) != 0;
}

namespace {
bool restricted_name(std::string_view n) {
  if (n.empty() || n.size() > 127) return false;
  const auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  if (!alnum(n.front())) return false;
  for (char c : n) {
    if (!alnum(c) && std::string_view("!#$&-^_.+").find(c) == std::string_view::npos) return false;
  }
  return true;
}
}  // namespace

bool valid(std::string_view type) {
  const auto slash = type.find('/');
  if (slash == std::string_view::npos) return false;
  return restricted_name(type.substr(0, slash)) && restricted_name(type.substr(slash + 1));
}

std::string of_manifest(std::string_view content_type, std::string_view body) {
  if (valid(content_type) && content_type != "application/octet-stream") return std::string(content_type);
  boost::system::error_code ec;
  const auto doc = boost::json::parse(body, ec);
  if (!ec && doc.is_object()) {
    if (const auto* mt = doc.get_object().if_contains("mediaType"); mt && mt->is_string() && valid(mt->get_string()))
      return std::string(mt->get_string());
  }
  return std::string(oci_manifest);
}

namespace {
// JWS base64url, unpadded, to bytes.
std::optional<std::string> base64url_decode(std::string_view text) {
  std::string standard(text);
  for (char& c : standard) {
    if (c == '+' || c == '/' || c == '=') return std::nullopt;  // the standard alphabet, not JWS's
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  if (standard.size() % 4 == 1) return std::nullopt;
  standard.append((4 - standard.size() % 4) % 4, '=');
  std::string out;
  if (!base64_decode(standard, out)) return std::nullopt;
  return out;
}
}  // namespace

std::optional<std::string> schema1_payload(std::string_view signed_bytes) {
  boost::system::error_code ec;
  const auto doc = boost::json::parse(signed_bytes, ec);
  if (ec || !doc.is_object()) return std::nullopt;
  const auto* sigs = doc.get_object().if_contains("signatures");
  if (sigs == nullptr || !sigs->is_array() || sigs->get_array().empty()) return std::nullopt;
  std::optional<std::string> payload;
  for (const auto& sig : sigs->get_array()) {
    const auto* prot = sig.is_object() ? sig.get_object().if_contains("protected") : nullptr;
    if (prot == nullptr || !prot->is_string()) return std::nullopt;
    const auto header_bytes = base64url_decode(prot->get_string());
    if (!header_bytes) return std::nullopt;
    const auto header = boost::json::parse(*header_bytes, ec);
    if (ec || !header.is_object()) return std::nullopt;
    const auto* length = header.get_object().if_contains("formatLength");
    const auto* tail = header.get_object().if_contains("formatTail");
    if (length == nullptr || !length->is_int64() || tail == nullptr || !tail->is_string()) return std::nullopt;
    const auto n = length->get_int64();
    if (n < 0 || static_cast<std::uint64_t>(n) > signed_bytes.size()) return std::nullopt;
    const auto tail_bytes = base64url_decode(tail->get_string());
    if (!tail_bytes) return std::nullopt;
    std::string p(signed_bytes.substr(0, static_cast<std::size_t>(n)));
    p += *tail_bytes;
    if (payload && *payload != p) return std::nullopt;
    payload = std::move(p);
  }
  return payload;
}

}  // namespace berth::core::media_type
