#pragma once
// Structured logging: one JSON object per line on stdout, written with a single
// write(2) so lines from several threads never interleave. Thread-safe.
// Callers must never pass a secret as a field.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

namespace berth::log {

enum class level { debug = 0, info = 1, warn = 2, error = 3 };

// Returns false for an unknown name.
bool parse_level(std::string_view name, level& out);
std::string_view level_name(level l);

void set_level(level l);
bool enabled(level l);

struct field {
  using value_type = std::variant<std::string_view, std::int64_t, std::uint64_t, double, bool>;
  std::string_view key;
  value_type value;
  field(std::string_view k, std::string_view v) : key(k), value(v) {}
  field(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
  field(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
  field(std::string_view k, int v) : key(k), value(static_cast<std::int64_t>(v)) {}
  field(std::string_view k, long v) : key(k), value(static_cast<std::int64_t>(v)) {}
  field(std::string_view k, long long v) : key(k), value(static_cast<std::int64_t>(v)) {}
  field(std::string_view k, unsigned v) : key(k), value(static_cast<std::uint64_t>(v)) {}
  field(std::string_view k, unsigned long v) : key(k), value(static_cast<std::uint64_t>(v)) {}
  field(std::string_view k, unsigned long long v) : key(k), value(static_cast<std::uint64_t>(v)) {}
  field(std::string_view k, double v) : key(k), value(v) {}
  field(std::string_view k, bool v) : key(k), value(v) {}
};

// {"ts":"...","level":"info","event":"<event>", fields...}
void write(level l, std::string_view event, std::initializer_list<field> fields = {});

inline void debug(std::string_view e, std::initializer_list<field> f = {}) {
  write(level::debug, e, f);
}
inline void info(std::string_view e, std::initializer_list<field> f = {}) {
  write(level::info, e, f);
}
inline void warn(std::string_view e, std::initializer_list<field> f = {}) {
  write(level::warn, e, f);
}
inline void error(std::string_view e, std::initializer_list<field> f = {}) {
  write(level::error, e, f);
}

}  // namespace berth::log
