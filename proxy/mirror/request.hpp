#pragma once
// A validated pull request, as the router hands it to the mirror.
#include <optional>
#include <string>

#include "core/reference.hpp"

namespace berth::mirror {

enum class endpoint { base, manifest, blob, tags_list, referrers };

struct pull_request {
  endpoint kind = endpoint::base;
  bool head = false;
  std::string ns;                      // URL-decoded ?ns=, empty when absent
  std::string name;                    // repository name, grammar-checked
  std::string reference;               // tag or digest (manifests); digest (blobs, referrers)
  std::optional<core::digest> digest;  // set when `reference` is a digest
  // tags/list and referrers query parameters, passed through
  std::optional<std::string> n;
  std::optional<std::string> last;
  std::optional<std::string> artifact_type;
  // client headers that matter upstream
  std::string accept;  // every Accept line, joined
  std::string range;
  std::string if_none_match;  // every If-None-Match line, joined
};

}  // namespace berth::mirror
