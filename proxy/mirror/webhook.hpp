#pragma once
// Harbor's webhook events (project webhook, HTTP endpoint, "Default" or
// "CloudEvents" payload format), reduced to what the metadata cache must forget:
// the tags and digests of the artifact that was pushed, deleted or re-scanned.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mirror/registry_table.hpp"

namespace berth::mirror {

struct invalidation {
  std::string event;                // PUSH_ARTIFACT, harbor.artifact.deleted, ...
  std::string registry;             // the registry's id
  std::string repository;           // library/app
  std::vector<std::string> groups;  // metadata cache groups to drop; empty: nothing to do (a pull event)
};

// `registry_hint` (the endpoint's ?registry= parameter) names the registry; without
// it, the host of the event's resource_url does, else the default registry.
// nullopt and `error` set when the body is not an event Berth understands.
std::optional<invalidation> parse_harbor_event(std::string_view body, const registry_table& table,
                                               std::string_view registry_hint, std::string& error);

// Compares a request's Authorization header with the shared secret, in time that
// does not depend on where they differ. "Bearer <secret>" is accepted too.
bool webhook_authorized(std::string_view authorization, std::string_view secret);

}  // namespace berth::mirror
