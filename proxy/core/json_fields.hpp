#pragma once
// Reading numbers out of parsed JSON without throwing: a field that is missing, not
// an integer, or negative where the target is unsigned is simply not there.
#include <boost/json/object.hpp>
#include <string_view>
#include <type_traits>

namespace berth::core {

template <class T>
bool get_int(const boost::json::object& o, std::string_view key, T& out) {
  const auto* v = o.if_contains(key);
  if (v == nullptr) return false;
  if (const auto* i = v->if_int64()) {
    if constexpr (std::is_unsigned_v<T>) {
      if (*i < 0) return false;
    }
    out = static_cast<T>(*i);
    return true;
  }
  if (const auto* u = v->if_uint64()) {
    out = static_cast<T>(*u);
    return true;
  }
  return false;
}

}  // namespace berth::core
