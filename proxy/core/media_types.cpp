#include "core/media_types.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

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

}  // namespace berth::core::media_type
