#pragma once
// Which upstream registry serves a request: by the URL-decoded ns, else the
// default registry, and whether its repository allowlist admits the name.
// Immutable after start-up; shared by all threads.
#include <string>
#include <string_view>
#include <vector>

namespace berth::upstream {
class registry;
}

namespace berth::mirror {

// Glob over repository names: "*" matches within one path component, "**" across
// components. "library/*" admits library/app but not library/a/b; "platform/**" admits both.
bool repository_matches(std::string_view pattern, std::string_view name);

class registry_table {
 public:
  registry_table(std::vector<upstream::registry*> registries, const std::string& default_registry);

  // nullptr when no registry answers to this ns (or ns is empty and there is no default).
  upstream::registry* find(std::string_view ns) const;
  static bool allows(const upstream::registry& reg, std::string_view repository);

 private:
  std::vector<upstream::registry*> registries_;
  upstream::registry* default_ = nullptr;
};

}  // namespace berth::mirror
