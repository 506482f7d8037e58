#pragma once
// A small ordered list of HTTP header fields, case-insensitive on names. Used to
// carry headers between modules without exposing Beast outside http/ and upstream/.
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace berth::core {

bool iequals(std::string_view a, std::string_view b);

class headers {
 public:
  using field = std::pair<std::string, std::string>;

  void add(std::string name, std::string value) { fields_.emplace_back(std::move(name), std::move(value)); }
  // Replaces every field of that name with one.
  void set(std::string_view name, std::string value);
  void erase(std::string_view name);
  // The first value of that name.
  std::optional<std::string_view> get(std::string_view name) const;

  const std::vector<field>& fields() const { return fields_; }
  bool empty() const { return fields_.empty(); }

 private:
  std::vector<field> fields_;
};

}  // namespace berth::core
