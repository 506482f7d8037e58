#include "core/headers.hpp"

#include <algorithm>

namespace berth::core {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

void headers::set(std::string_view name, std::string value) {
  erase(name);
  fields_.emplace_back(std::string(name), std::move(value));
}

void headers::erase(std::string_view name) {
  std::erase_if(fields_, [&](const field& f) { return iequals(f.first, name); });
}

std::optional<std::string_view> headers::get(std::string_view name) const {
  for (const auto& f : fields_) {
    if (iequals(f.first, name)) return std::string_view(f.second);
  }
  return std::nullopt;
}

}  // namespace berth::core
