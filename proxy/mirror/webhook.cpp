#include "mirror/webhook.hpp"

#include <openssl/crypto.h>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include "core/reference.hpp"
#include "meta/cache.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

namespace json = boost::json;

namespace {

std::string string_at(const json::object& o, std::string_view k) {
  const auto* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

bool same(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

bool webhook_authorized(std::string_view authorization, std::string_view secret) {
  if (secret.empty()) return false;
  const bool plain = same(authorization, secret);
  const bool bearer =
      authorization.size() > 7 && authorization.substr(0, 7) == "Bearer " && same(authorization.substr(7), secret);
  return plain || bearer;
}

std::optional<invalidation> parse_harbor_event(std::string_view body, const registry_table& table,
                                               std::string_view registry_hint, std::string& error) {
  boost::system::error_code ec;
  auto doc = json::parse(body, ec);
  if (ec || !doc.is_object()) {
    error = "the body is not a JSON object";
    return std::nullopt;
  }
  const auto& root = doc.get_object();
  invalidation out;
  out.event = string_at(root, "type");
  // Default format: event_data; CloudEvents: data.
  const auto* data = root.if_contains("event_data");
  if (data == nullptr) data = root.if_contains("data");
  if (out.event.empty() || data == nullptr || !data->is_object()) {
    error = "not a Harbor webhook event (expected \"type\" and \"event_data\" or \"data\")";
    return std::nullopt;
  }
  // Pulls (Berth's own among them) change nothing; quota and replication events name no artifact.
  if (out.event.find("PULL") != std::string::npos || out.event.find("pulled") != std::string::npos) return out;
  const auto* repo = data->get_object().if_contains("repository");
  const auto* resources = data->get_object().if_contains("resources");
  if (repo == nullptr || !repo->is_object() || resources == nullptr || !resources->is_array()) return out;
  out.repository = string_at(repo->get_object(), "repo_full_name");
  if (!core::is_valid_name(out.repository)) {
    error = "event_data.repository.repo_full_name \"" + out.repository + "\" is not a repository name";
    return std::nullopt;
  }

  upstream::registry* reg = nullptr;
  std::string host;
  for (const auto& r : resources->get_array()) {
    if (!r.is_object()) continue;
    const auto url = string_at(r.get_object(), "resource_url");
    if (host.empty()) host = url.substr(0, url.find('/'));
  }
  if (!registry_hint.empty()) {
    reg = table.find(registry_hint);
    if (reg == nullptr) {
      error = "registry \"" + std::string(registry_hint) + "\" is not mirrored here";
      return std::nullopt;
    }
  } else {
    reg = host.empty() ? nullptr : table.find(host);
    if (reg == nullptr) reg = table.find("");
    if (reg == nullptr) {
      error = "resource_url host \"" + host +
              "\" is not one of the registries' names; add ?registry=<name> to the webhook URL";
      return std::nullopt;
    }
  }
  out.registry = reg->id();

  for (const auto& r : resources->get_array()) {
    if (!r.is_object()) continue;
    const auto tag = string_at(r.get_object(), "tag");
    const auto digest = string_at(r.get_object(), "digest");
    if (!tag.empty() && core::is_valid_tag(tag))
      out.groups.push_back(meta::key::tag(out.registry, out.repository, tag, 0).group);
    if (core::parse_digest(digest)) out.groups.push_back(meta::key::digest(out.registry, out.repository, digest).group);
  }
  return out;
}

}  // namespace berth::mirror
