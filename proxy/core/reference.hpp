#pragma once
// Grammar of repository names, tags and digests (OCI distribution spec,
// image-spec descriptor.md). Pure functions, no allocation on the check path.
#include <optional>
#include <string>
#include <string_view>

namespace berth::core {

inline constexpr std::size_t k_max_name_length = 255;
inline constexpr std::size_t k_max_tag_length = 128;

// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
bool is_valid_name(std::string_view name);

// [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
bool is_valid_tag(std::string_view tag);

// A digest this proxy can verify: "sha256:<64 lowercase hex>" or
// "sha512:<128 lowercase hex>". Other algorithms are grammatical but unverifiable.
struct digest {
  std::string algorithm;  // "sha256" or "sha512"
  std::string encoded;    // lowercase hex
  std::string str() const { return algorithm + ":" + encoded; }
  friend bool operator==(const digest&, const digest&) = default;
};

enum class digest_problem { none, malformed, unsupported_algorithm, bad_encoding };

// Parses and validates a digest. `problem` says why it failed.
std::optional<digest> parse_digest(std::string_view text, digest_problem* problem = nullptr);

// True if the text looks like a digest at all (contains ':'), as opposed to a tag.
inline bool looks_like_digest(std::string_view ref) {
  return ref.find(':') != std::string_view::npos;
}

}  // namespace berth::core
