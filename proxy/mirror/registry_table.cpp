#include "mirror/registry_table.hpp"

#include "core/headers.hpp"
#include "upstream/client.hpp"

namespace berth::mirror {

bool repository_matches(std::string_view pattern, std::string_view name) {
  if (pattern.empty()) return name.empty();
  if (pattern.substr(0, 2) == "**") {
    auto rest = pattern.substr(2);
    for (std::size_t i = 0; i <= name.size(); ++i) {
      if (repository_matches(rest, name.substr(i))) return true;
    }
    return false;
  }
  if (pattern[0] == '*') {
    auto rest = pattern.substr(1);
    for (std::size_t i = 0; i <= name.size(); ++i) {
      if (repository_matches(rest, name.substr(i))) return true;
      if (i < name.size() && name[i] == '/') break;
    }
    return false;
  }
  return !name.empty() && pattern[0] == name[0] && repository_matches(pattern.substr(1), name.substr(1));
}

registry_table::registry_table(std::vector<upstream::registry*> registries, const std::string& default_registry)
    : registries_(std::move(registries)) {
  if (!default_registry.empty()) default_ = find(default_registry);
}

upstream::registry* registry_table::find(std::string_view ns) const {
  if (ns.empty()) return default_;
  // Registry host names are case-insensitive.
  for (auto* r : registries_) {
    for (const auto& n : r->options().names) {
      if (core::iequals(n, ns)) return r;
    }
  }
  return nullptr;
}

bool registry_table::allows(const upstream::registry& reg, std::string_view repository) {
  const auto& patterns = reg.options().repositories;
  if (patterns.empty()) return true;
  for (const auto& p : patterns) {
    if (repository_matches(p, repository)) return true;
  }
  return false;
}

}  // namespace berth::mirror
