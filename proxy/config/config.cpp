#include "config/config.hpp"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <set>
#include <sstream>

#include "core/files.hpp"
#include "peer/allow_list.hpp"
#include "peer/tls.hpp"
#include "upstream/credentials.hpp"

namespace berth::config {
namespace {

// Where a value sits, for error messages.
struct context {
  const std::string& source;
  std::string key;

  [[noreturn]] void fail(const YAML::Node& node, const std::string& what) const {
    std::ostringstream out;
    out << source;
    if (node.IsDefined() && node.Mark().line >= 0) out << ':' << node.Mark().line + 1 << ':' << node.Mark().column + 1;
    out << ": " << (key.empty() ? "" : key + ": ") << what;
    throw config_error(out.str());
  }
  context child(const std::string& name) const { return {source, key.empty() ? name : key + "." + name}; }
  context item(std::size_t i) const { return {source, key + "[" + std::to_string(i) + "]"}; }
};

void check_keys(const YAML::Node& map, const context& ctx, const std::vector<std::string>& allowed) {
  if (!map.IsMap()) ctx.fail(map, "must be a mapping");
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) ctx.fail(kv.first, "keys must be plain names, not a list or a mapping");
    const auto name = kv.first.as<std::string>();
    bool ok = false;
    for (const auto& a : allowed) ok = ok || name == a;
    if (!ok) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      ctx.child(name).fail(kv.first, "unknown key (known keys: " + list + ")");
    }
  }
}

std::string as_string(const YAML::Node& n, const context& ctx) {
  if (!n.IsScalar()) ctx.fail(n, "must be a string");
  return n.as<std::string>();
}

bool as_bool(const YAML::Node& n, const context& ctx) {
  if (!n.IsScalar()) ctx.fail(n, "must be true or false");
  bool b = false;
  if (!YAML::convert<bool>::decode(n, b)) ctx.fail(n, "must be true or false, not \"" + n.Scalar() + "\"");
  return b;
}

unsigned long as_count(const YAML::Node& n, const context& ctx, unsigned long min, unsigned long max) {
  const auto s = as_string(n, ctx);
  unsigned long v = 0;
  std::size_t used = 0;
  try {
    v = std::stoul(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != s.size() || s[0] == '-') ctx.fail(n, "must be a whole number, not \"" + s + "\"");
  if (v < min || v > max) ctx.fail(n, "must be between " + std::to_string(min) + " and " + std::to_string(max));
  return v;
}

std::chrono::milliseconds as_duration(const YAML::Node& n, const context& ctx, bool zero_ok = false) {
  const auto s = as_string(n, ctx);
  std::chrono::milliseconds d{};
  if (!parse_duration(s, d))
    ctx.fail(n, "must be a duration such as 30s, 500ms, 5m or 1h (at most 87600h), not \"" + s + "\"");
  if (d.count() < 0 || (d.count() == 0 && !zero_ok)) ctx.fail(n, "must be longer than zero");
  return d;
}

std::vector<std::string> as_string_list(const YAML::Node& n, const context& ctx) {
  std::vector<std::string> out;
  if (n.IsScalar()) {
    out.push_back(n.as<std::string>());
    return out;
  }
  if (!n.IsSequence()) ctx.fail(n, "must be a list of strings");
  for (std::size_t i = 0; i < n.size(); ++i) out.push_back(as_string(n[i], ctx.item(i)));
  return out;
}

// host:port with an IP address host ("[::1]:5050", "0.0.0.0:5050", "127.0.0.1:0").
bool valid_listen(const std::string& a) {
  const auto colon = a.rfind(':');
  if (colon == std::string::npos || colon + 1 == a.size()) return false;
  std::string host = a.substr(0, colon);
  const std::string port = a.substr(colon + 1);
  for (char c : port) {
    if (c < '0' || c > '9') return false;
  }
  if (port.size() > 5 || std::stoul(port) > 65535) return false;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool valid_host_name(const std::string& h) {
  if (h.empty() || h.size() > 255) return false;
  for (char c : h) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool valid_pattern(const std::string& p) {
  if (p.empty() || p.front() == '/' || p.back() == '/') return false;
  for (char c : p) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' || c == '/' || c == '*';
    if (!ok) return false;
  }
  return true;
}

bool valid_endpoint(const std::string& e) {
  const auto scheme_end = e.find("://");
  if (scheme_end == std::string::npos) return false;
  const auto scheme = e.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") return false;
  auto rest = e.substr(scheme_end + 3);
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string::npos) return false;
  return true;
}

void check_readable(const YAML::Node& n, const context& ctx, const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) ctx.fail(n, "file " + path + " cannot be read");
}

upstream::registry_options parse_registry(const YAML::Node& n, const context& ctx) {
  check_keys(n, ctx,
             {"names", "endpoint", "credentials", "username_file", "password_file", "repositories", "ca_file",
              "realm_hosts", "redirect_hosts"});
  upstream::registry_options r;
  if (!n["names"]) ctx.fail(n, "names is required (the ns values containerd sends, e.g. [registry.example.ts.net])");
  r.names = as_string_list(n["names"], ctx.child("names"));
  if (r.names.empty()) ctx.child("names").fail(n["names"], "must name at least one registry");
  for (std::size_t i = 0; i < r.names.size(); ++i) {
    if (!valid_host_name(r.names[i]))
      ctx.child("names").item(i).fail(n["names"], "\"" + r.names[i] + "\" is not a registry host name");
  }
  if (n["endpoint"]) {
    r.endpoint = as_string(n["endpoint"], ctx.child("endpoint"));
    if (!valid_endpoint(r.endpoint)) {
      ctx.child("endpoint")
          .fail(n["endpoint"],
                "must be an http:// or https:// URL with no path, user or query, not \"" + r.endpoint + "\"");
    }
    while (r.endpoint.back() == '/') r.endpoint.pop_back();
  } else {
    r.endpoint = "https://" + r.names.front();
  }
  auto& c = r.credentials;
  if (n["credentials"]) c.docker_config_file = as_string(n["credentials"], ctx.child("credentials"));
  if (n["username_file"]) c.username_file = as_string(n["username_file"], ctx.child("username_file"));
  if (n["password_file"]) c.password_file = as_string(n["password_file"], ctx.child("password_file"));
  if (!c.docker_config_file.empty() && (!c.username_file.empty() || !c.password_file.empty())) {
    ctx.child("credentials").fail(n["credentials"], "use either credentials or username_file/password_file, not both");
  }
  if (c.username_file.empty() != c.password_file.empty()) {
    ctx.child(c.username_file.empty() ? "username_file" : "password_file")
        .fail(n, "username_file and password_file go together");
  }
  c.names = r.names;
  c.endpoint_host = upstream::normalize_registry_host(r.endpoint);
  if (n["repositories"]) {
    r.repositories = as_string_list(n["repositories"], ctx.child("repositories"));
    for (std::size_t i = 0; i < r.repositories.size(); ++i) {
      if (!valid_pattern(r.repositories[i])) {
        ctx.child("repositories")
            .item(i)
            .fail(n["repositories"],
                  "\"" + r.repositories[i] + "\" is not a repository pattern (lower-case name, '*' and '**')");
      }
    }
  }
  if (n["ca_file"]) {
    r.ca_file = as_string(n["ca_file"], ctx.child("ca_file"));
    check_readable(n["ca_file"], ctx.child("ca_file"), r.ca_file);
  }
  if (n["realm_hosts"]) r.realm_hosts = as_string_list(n["realm_hosts"], ctx.child("realm_hosts"));
  if (n["redirect_hosts"]) r.redirect_hosts = as_string_list(n["redirect_hosts"], ctx.child("redirect_hosts"));
  return r;
}

void apply_env(settings& s, const env_lookup& env) {
  auto fail = [](const char* var, const std::string& what) {
    throw config_error(std::string("environment ") + var + ": " + what);
  };
  if (const char* v = env("BERTH_LISTEN")) {
    if (!valid_listen(v)) fail("BERTH_LISTEN", "must be IP:port, not \"" + std::string(v) + "\"");
    s.server.listen = v;
  }
  if (const char* v = env("BERTH_ADMIN_LISTEN")) {
    if (!valid_listen(v)) fail("BERTH_ADMIN_LISTEN", "must be IP:port, not \"" + std::string(v) + "\"");
    s.server.admin_listen = v;
  }
  if (const char* v = env("BERTH_PEERS_LISTEN")) {
    if (!valid_listen(v)) fail("BERTH_PEERS_LISTEN", "must be IP:port, not \"" + std::string(v) + "\"");
    s.peers.listen = v;
  }
  if (const char* v = env("BERTH_DEFAULT_REGISTRY")) s.default_registry = v;
  if (const char* v = env("BERTH_LOG_LEVEL")) {
    if (!log::parse_level(v, s.log_level)) fail("BERTH_LOG_LEVEL", "must be debug, info, warn or error");
  }
  if (const char* v = env("BERTH_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n < 0 || n > 256) fail("BERTH_THREADS", "must be a number from 0 to 256");
    s.server.threads = static_cast<unsigned>(n);
  }
  if (const char* v = env("BERTH_ACCESS_LOG")) {
    const std::string b = v;
    if (b == "true" || b == "1")
      s.server.access_log = true;
    else if (b == "false" || b == "0")
      s.server.access_log = false;
    else
      fail("BERTH_ACCESS_LOG", "must be true or false");
  }
}

}  // namespace

const char* process_env(const char* name) {
  return std::getenv(name);
}

bool parse_duration(std::string_view text, std::chrono::milliseconds& out) {
  if (text.empty()) return false;
  double total_ms = 0;
  std::size_t i = 0;
  bool any = false;
  while (i < text.size()) {
    std::size_t start = i;
    while (i < text.size() && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.')) ++i;
    if (start == i) return false;
    double value = 0;
    try {
      value = std::stod(std::string(text.substr(start, i - start)));
    } catch (const std::exception&) {
      return false;
    }
    std::size_t ustart = i;
    while (i < text.size() && text[i] >= 'a' && text[i] <= 'z') ++i;
    const auto unit = text.substr(ustart, i - ustart);
    if (unit.empty()) {
      if (any || i != text.size()) return false;
      total_ms += value * 1000;
    } else if (unit == "ms") {
      total_ms += value;
    } else if (unit == "s") {
      total_ms += value * 1000;
    } else if (unit == "m") {
      total_ms += value * 60000;
    } else if (unit == "h") {
      total_ms += value * 3600000;
    } else {
      return false;
    }
    any = true;
  }
  // Ten years at most: every duration ends up added to a clock, and a double past
  // the integer range cannot even be converted.
  constexpr double k_max_ms = 87600.0 * 3600 * 1000;
  if (!(total_ms <= k_max_ms)) return false;
  out = std::chrono::milliseconds(static_cast<long long>(total_ms));
  return true;
}

namespace {
settings parse_document(std::string_view yaml, const std::string& source, const env_lookup& env);
}

settings parse(std::string_view yaml, const std::string& source, const env_lookup& env) {
  // Every check names its key; this is the net under them: a yaml-cpp conversion
  // that slipped through still becomes an error naming the file and position.
  try {
    return parse_document(yaml, source, env);
  } catch (const YAML::Exception& ex) {
    throw config_error(source + ":" + std::to_string(ex.mark.line + 1) + ":" + std::to_string(ex.mark.column + 1) +
                       ": " + ex.msg);
  }
}

namespace {

std::string show_ms(std::chrono::milliseconds d) {
  const auto n = d.count();
  if (n != 0 && n % 3600000 == 0) return std::to_string(n / 3600000) + "h";
  if (n != 0 && n % 60000 == 0) return std::to_string(n / 60000) + "m";
  if (n % 1000 == 0) return std::to_string(n / 1000) + "s";
  return std::to_string(n) + "ms";
}

// One row per configuration key: where it sits, how it is read, how it is shown.
// Parsing, the list of known keys in every error message and render() all walk this
// table, so a key cannot be parsed but not shown, nor shown with another default.
struct key_row {
  std::string section;  // "" (top level), "clients", "upstream", "cache", "metadata" or "peers"
  std::string name;
  std::function<void(const YAML::Node&, const context&, settings&)> parse;
  // Writes "name: value"; writes nothing for a key that does not apply (an unset file).
  std::function<void(YAML::Emitter&, const settings&)> render;
};

// The field a row reads and shows. A getter, not a pointer to member: the fields sit
// in different structs (and the cache's in an optional, engaged when its section is there).
template <class T>
using field_of = T& (*)(settings&);

template <class T>
T& field(field_of<T> get, const settings& s) {
  return get(const_cast<settings&>(s));
}

void emit(YAML::Emitter& out, const std::string& name, const std::string& value) {
  out << YAML::Key << name << YAML::Value << value;
}

key_row duration_row(const std::string& section, const std::string& name, field_of<std::chrono::milliseconds> get,
                     bool zero_ok = false) {
  return {section, name,
          [get, zero_ok](const YAML::Node& n, const context& c, settings& s) { get(s) = as_duration(n, c, zero_ok); },
          [get, name](YAML::Emitter& out, const settings& s) { emit(out, name, show_ms(field(get, s))); }};
}

template <class T>
key_row count_row(const std::string& section, const std::string& name, field_of<T> get, unsigned long min,
                  unsigned long max) {
  return {section, name,
          [get, min, max](const YAML::Node& n, const context& c, settings& s) {
            get(s) = static_cast<T>(as_count(n, c, min, max));
          },
          [get, name](YAML::Emitter& out, const settings& s) { emit(out, name, std::to_string(field(get, s))); }};
}

key_row bool_row(const std::string& section, const std::string& name, field_of<bool> get) {
  return {
      section, name, [get](const YAML::Node& n, const context& c, settings& s) { get(s) = as_bool(n, c); },
      [get, name](YAML::Emitter& out, const settings& s) { out << YAML::Key << name << YAML::Value << field(get, s); }};
}

key_row listen_row(const std::string& name, field_of<std::string> get, const std::string& example) {
  return {"", name,
          [get, example](const YAML::Node& n, const context& c, settings& s) {
            get(s) = as_string(n, c);
            if (!valid_listen(get(s))) c.fail(n, "must be IP:port such as " + example);
          },
          [get, name](YAML::Emitter& out, const settings& s) { emit(out, name, field(get, s)); }};
}

void render_registries(YAML::Emitter& out, const settings& s) {
  out << YAML::Key << "registries" << YAML::Value << YAML::BeginSeq;
  for (const auto& r : s.registries) {
    out << YAML::BeginMap;
    out << YAML::Key << "names" << YAML::Value << YAML::Flow << r.names;
    out << YAML::Key << "endpoint" << YAML::Value << r.endpoint;
    // Only file names: the secrets in them are never printed.
    if (!r.credentials.docker_config_file.empty())
      out << YAML::Key << "credentials" << YAML::Value << r.credentials.docker_config_file;
    if (!r.credentials.username_file.empty())
      out << YAML::Key << "username_file" << YAML::Value << r.credentials.username_file;
    if (!r.credentials.password_file.empty())
      out << YAML::Key << "password_file" << YAML::Value << r.credentials.password_file;
    if (!r.repositories.empty()) {
      // Quoted: a pattern starting with '*' would otherwise read back as a YAML alias.
      out << YAML::Key << "repositories" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const auto& p : r.repositories) out << YAML::DoubleQuoted << p;
      out << YAML::EndSeq;
    }
    if (!r.ca_file.empty()) out << YAML::Key << "ca_file" << YAML::Value << r.ca_file;
    if (!r.realm_hosts.empty()) out << YAML::Key << "realm_hosts" << YAML::Value << YAML::Flow << r.realm_hosts;
    if (!r.redirect_hosts.empty())
      out << YAML::Key << "redirect_hosts" << YAML::Value << YAML::Flow << r.redirect_hosts;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
}

// Every key Berth reads, in the order it is read and shown.
const std::vector<key_row>& key_table() {
  static const std::vector<key_row> rows = [] {
    std::vector<key_row> t;
    // --- top level
    t.push_back(listen_row(
        "listen", [](settings& s) -> std::string& { return s.server.listen; }, "127.0.0.1:5050"));
    t.push_back(listen_row(
        "admin_listen", [](settings& s) -> std::string& { return s.server.admin_listen; }, "127.0.0.1:9095"));
    t.push_back(count_row<unsigned>(
        "", "threads", [](settings& s) -> unsigned& { return s.server.threads; }, 0, 256));
    t.push_back({"", "log_level",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   if (!log::parse_level(as_string(n, c), s.log_level)) c.fail(n, "must be debug, info, warn or error");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   emit(out, "log_level", std::string(log::level_name(s.log_level)));
                 }});
    t.push_back(bool_row("", "access_log", [](settings& s) -> bool& { return s.server.access_log; }));
    t.push_back(duration_row("", "shutdown_timeout",
                             [](settings& s) -> std::chrono::milliseconds& { return s.server.shutdown_timeout; }));
    t.push_back({"", "watchdog_timeout",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.server.watchdog_timeout = as_duration(n, c, true);
                   if (s.server.watchdog_timeout.count() > 0 &&
                       s.server.watchdog_timeout < std::chrono::milliseconds(500))
                     c.fail(n, "must be 0s (off) or at least 500ms");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   emit(out, "watchdog_timeout", show_ms(s.server.watchdog_timeout));
                 }});
    t.push_back({"", "registries",
                 [](const YAML::Node& regs, const context& c, settings& s) {
                   if (!regs.IsSequence() || regs.size() == 0) c.fail(regs, "must be a non-empty list of registries");
                   std::set<std::string> seen;
                   for (std::size_t i = 0; i < regs.size(); ++i) {
                     const auto ctx = c.item(i);
                     s.registries.push_back(parse_registry(regs[i], ctx));
                     for (const auto& n : s.registries.back().names) {
                       if (!seen.insert(upstream::normalize_registry_host(n)).second)
                         ctx.child("names").fail(regs[i]["names"], "\"" + n + "\" is already used by another registry");
                     }
                   }
                 },
                 render_registries});
    t.push_back({"", "handover_socket",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.server.handover_socket = as_string(n, c);
                   const auto& v = s.server.handover_socket;
                   if (!v.empty() && v != "none" && v.front() != '/') c.fail(n, "must be an absolute path or none");
                   if (v.size() > 107) c.fail(n, "must be at most 107 bytes (a Unix socket path)");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.server.handover_socket.empty()) emit(out, "handover_socket", s.server.handover_socket);
                 }});
    t.push_back({"", "default_registry",
                 [](const YAML::Node& n, const context& c, settings& s) { s.default_registry = as_string(n, c); },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.default_registry.empty()) emit(out, "default_registry", s.default_registry);
                 }});
    // --- clients: the connections containerd opens to Berth
    using ms = std::chrono::milliseconds;
    t.push_back(duration_row("clients", "idle_timeout", [](settings& s) -> ms& { return s.server.idle_timeout; }));
    t.push_back(duration_row("clients", "write_timeout", [](settings& s) -> ms& { return s.server.write_timeout; }));
    t.push_back(count_row<std::size_t>(
        "clients", "max_header_bytes", [](settings& s) -> std::size_t& { return s.server.max_header_bytes; }, 1024,
        1 << 20));
    t.push_back(count_row<std::size_t>(
        "clients", "max_connections", [](settings& s) -> std::size_t& { return s.server.max_connections; }, 0,
        1 << 20));
    t.push_back(count_row<std::size_t>(
        "clients", "admin_max_connections", [](settings& s) -> std::size_t& { return s.server.admin_max_connections; },
        0, 1 << 20));
    // --- upstream: Berth's connections to the registries
    t.push_back(
        duration_row("upstream", "connect_timeout", [](settings& s) -> ms& { return s.upstream.connect_timeout; }));
    t.push_back(
        duration_row("upstream", "response_timeout", [](settings& s) -> ms& { return s.upstream.response_timeout; }));
    t.push_back(duration_row("upstream", "read_timeout", [](settings& s) -> ms& { return s.upstream.read_timeout; }));
    t.push_back(duration_row("upstream", "idle_timeout", [](settings& s) -> ms& { return s.upstream.idle_timeout; }));
    t.push_back(
        duration_row("upstream", "pool_wait_timeout", [](settings& s) -> ms& { return s.upstream.pool_wait_timeout; }));
    t.push_back(count_row<std::size_t>(
        "upstream", "max_connections_per_host",
        [](settings& s) -> std::size_t& { return s.upstream.max_connections_per_host; }, 1, 10000));
    t.push_back(count_row<std::size_t>(
        "upstream", "max_idle_per_host", [](settings& s) -> std::size_t& { return s.upstream.max_idle_per_host; }, 0,
        10000));
    t.push_back(count_row<std::size_t>(
        "upstream", "max_redirects", [](settings& s) -> std::size_t& { return s.upstream.max_redirects; }, 0, 20));
    t.push_back({"upstream", "min_rate",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   const auto text = as_string(n, c);
                   std::uint64_t bytes = 0;
                   double fraction = 0;
                   if (text != "0" && (!parse_size(text, bytes, fraction) || fraction > 0))
                     c.fail(n, "must be bytes per second such as 32KiB (0 for no floor), not \"" + text + "\"");
                   s.upstream.min_rate = bytes;
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   emit(out, "min_rate", std::to_string(s.upstream.min_rate));  // bytes per second
                 }});
    t.push_back(
        duration_row("upstream", "min_rate_period", [](settings& s) -> ms& { return s.upstream.min_rate_period; }));
    // --- cache: the node-local blob cache (the section's presence turns it on)
    t.push_back({"cache", "dir",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& dir = s.cache->dir;
                   dir = as_string(n, c);
                   if (dir.empty() || dir.front() != '/') c.fail(n, "must be an absolute path");
                   while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
                 },
                 [](YAML::Emitter& out, const settings& s) { emit(out, "dir", s.cache->dir); }});
    t.push_back({"cache", "max_size",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   const auto text = as_string(n, c);
                   if (!parse_size(text, s.cache->max_bytes, s.cache->max_fraction))
                     c.fail(n, "must be a size such as 50GiB, 500MB or a percentage such as 80%, not \"" + text + "\"");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   emit(out, "max_size",
                        s.cache->max_bytes > 0 ? std::to_string(s.cache->max_bytes)
                                               : std::to_string(std::lround(s.cache->max_fraction * 100)) + "%");
                 }});
    t.push_back({"cache", "low_watermark",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   const auto text = as_string(n, c);
                   try {
                     std::size_t used = 0;
                     s.cache->low_watermark = std::stod(text, &used);
                     if (used != text.size()) throw std::invalid_argument(text);
                   } catch (const std::exception&) {
                     c.fail(n, "must be a number between 0 and 1");
                   }
                   if (!(s.cache->low_watermark > 0 && s.cache->low_watermark < 1))
                     c.fail(n, "must be between 0 and 1 (exclusive)");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   char watermark[32];
                   std::snprintf(watermark, sizeof watermark, "%g", s.cache->low_watermark);
                   emit(out, "low_watermark", watermark);
                 }});
    t.push_back(duration_row("cache", "fill_stall_timeout", [](settings& s) -> ms& { return s.cache->reader_stall; }));
    t.push_back(duration_row(
        "cache", "authorization_ttl", [](settings& s) -> ms& { return s.cache->authorization_ttl; }, true));
    t.push_back(bool_row("cache", "zero_copy", [](settings& s) -> bool& { return s.server.zero_copy; }));
    // --- metadata: manifest answers, node-local or shared through Redis/Dragonfly
    t.push_back({"metadata", "redis",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& m = s.metadata;
                   const auto url = as_string(n, c);
                   std::string why;
                   auto r = meta::parse_redis_url(url, why);
                   if (!r) c.fail(n, "\"" + url + "\" " + why + " (expected redis://[user[:password]@]host:port/db)");
                   m.redis = *r;
                   m.redis_url = "redis://" +
                                 (r->username.empty() ? "" : r->username + (r->password.empty() ? "@" : ":***@")) +
                                 (r->host.find(':') != std::string::npos ? "[" + r->host + "]" : r->host) + ":" +
                                 std::to_string(r->port) + "/" + std::to_string(r->db);
                 },
                 // The URL as parsed, with any password masked.
                 [](YAML::Emitter& out, const settings& s) {
                   if (s.metadata.redis) emit(out, "redis", s.metadata.redis_url);
                 }});
    t.push_back({"metadata", "password_file",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& m = s.metadata;
                   if (!m.redis) c.fail(n, "needs metadata.redis");
                   m.password_file = as_string(n, c);
                   check_readable(n, c, m.password_file);
                   std::string pw;
                   if (!core::read_file(m.password_file, pw) || (pw = core::trim_newlines(pw)).empty())
                     c.fail(n, "file " + m.password_file + " is empty or unreadable");
                   m.redis->password = pw;
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.metadata.password_file.empty()) emit(out, "password_file", s.metadata.password_file);
                 }});
    t.push_back({"metadata", "key_prefix",
                 [](const YAML::Node& n, const context& c, settings& s) { s.metadata.key_prefix = as_string(n, c); },
                 [](YAML::Emitter& out, const settings& s) {
                   out << YAML::Key << "key_prefix" << YAML::Value << YAML::DoubleQuoted << s.metadata.key_prefix;
                 }});
    t.push_back(duration_row(
        "metadata", "tag_ttl", [](settings& s) -> ms& { return s.metadata.tag_ttl; }, true));
    t.push_back({"metadata", "tag_ttl_overrides",
                 [](const YAML::Node& o, const context& ctx, settings& s) {
                   if (!o.IsSequence()) ctx.fail(o, "must be a list of {pattern, ttl}");
                   for (std::size_t i = 0; i < o.size(); ++i) {
                     const auto c = ctx.item(i);
                     check_keys(o[i], c, {"pattern", "ttl"});
                     if (!o[i]["pattern"] || !o[i]["ttl"]) c.fail(o[i], "needs both pattern and ttl");
                     meta::ttl_override t;
                     t.pattern = as_string(o[i]["pattern"], c.child("pattern"));
                     if (t.pattern.empty()) c.child("pattern").fail(o[i]["pattern"], "must not be empty");
                     t.ttl = as_duration(o[i]["ttl"], c.child("ttl"), true);
                     s.metadata.tag_ttl_overrides.push_back(t);
                   }
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (s.metadata.tag_ttl_overrides.empty()) return;
                   out << YAML::Key << "tag_ttl_overrides" << YAML::Value << YAML::BeginSeq;
                   for (const auto& o : s.metadata.tag_ttl_overrides) {
                     out << YAML::Flow << YAML::BeginMap << YAML::Key << "pattern" << YAML::Value << YAML::DoubleQuoted
                         << o.pattern << YAML::Key << "ttl" << YAML::Value << show_ms(o.ttl) << YAML::EndMap;
                   }
                   out << YAML::EndSeq;
                 }});
    t.push_back(duration_row(
        "metadata", "max_stale", [](settings& s) -> ms& { return s.metadata.max_stale; }, true));
    t.push_back(duration_row(
        "metadata", "negative_ttl", [](settings& s) -> ms& { return s.metadata.negative_ttl; }, true));
    t.push_back(duration_row("metadata", "manifest_ttl", [](settings& s) -> ms& { return s.metadata.manifest_ttl; }));
    t.push_back(duration_row(
        "metadata", "lock_wait", [](settings& s) -> ms& { return s.metadata.lock_wait; }, true));
    t.push_back({"metadata", "memory_size",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   const auto text = as_string(n, c);
                   std::uint64_t bytes = 0;
                   double fraction = 0;
                   if (!parse_size(text, bytes, fraction) || fraction > 0 || bytes < (1 << 20))
                     c.fail(n, "must be a size of at least 1MiB such as 64MiB, not \"" + text + "\"");
                   s.metadata.memory_bytes = bytes;
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   const auto bytes = s.metadata.memory_bytes;
                   emit(out, "memory_size",
                        bytes % (1 << 20) == 0 ? std::to_string(bytes >> 20) + "MiB" : std::to_string(bytes));
                 }});
    t.push_back({"metadata", "webhook_secret_file",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& f = s.metadata.webhook_secret_file;
                   f = as_string(n, c);
                   if (f.empty() || f.front() != '/') c.fail(n, "must be an absolute path");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.metadata.webhook_secret_file.empty())
                     emit(out, "webhook_secret_file", s.metadata.webhook_secret_file);
                 }});
    t.push_back({"metadata", "secret_file",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& m = s.metadata;
                   if (!m.redis) c.fail(n, "needs metadata.redis (it signs what nodes share there)");
                   m.secret_file = as_string(n, c);
                   check_readable(n, c, m.secret_file);
                   if (!core::read_file(m.secret_file, m.secret) ||
                       (m.secret = core::trim_newlines(m.secret)).size() < 16)
                     c.fail(n, "file " + m.secret_file + " must hold a secret of at least 16 characters");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.metadata.secret_file.empty()) emit(out, "secret_file", s.metadata.secret_file);
                 }});
    t.push_back({"metadata", "timeout",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.metadata.timeout = as_duration(n, c);
                   if (s.metadata.redis) s.metadata.redis->command_timeout = s.metadata.timeout;
                 },
                 [](YAML::Emitter& out, const settings& s) { emit(out, "timeout", show_ms(s.metadata.timeout)); }});
    // --- peers: blob sharing between the cluster's nodes
    t.push_back({"peers", "listen",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.peers.listen = as_string(n, c);
                   if (!valid_listen(s.peers.listen)) c.fail(n, "must be IP:port such as 10.0.0.5:5051");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (s.peers.enabled()) emit(out, "listen", s.peers.listen);
                 }});
    t.push_back({"peers", "advertise",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.peers.advertise = as_string(n, c);
                   if (!valid_listen(s.peers.advertise) || s.peers.advertise.ends_with(":0"))
                     c.fail(n, "must be IP:port such as 10.0.0.5:5051 (where other nodes reach this one)");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.peers.advertise.empty()) emit(out, "advertise", s.peers.advertise);
                 }});
    t.push_back({"peers", "secret_file",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   auto& p = s.peers;
                   p.secret_file = as_string(n, c);
                   check_readable(n, c, p.secret_file);
                   if (!core::read_file(p.secret_file, p.secret) ||
                       (p.secret = core::trim_newlines(p.secret)).size() < 16)
                     c.fail(n, "file " + p.secret_file + " must hold a secret of at least 16 characters");
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (!s.peers.secret_file.empty()) emit(out, "secret_file", s.peers.secret_file);
                 }});
    t.push_back({"peers", "allow",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   s.peers.allow = as_string_list(n, c);
                   for (std::size_t i = 0; i < s.peers.allow.size(); ++i) {
                     if (!peer::valid_network(s.peers.allow[i])) {
                       c.item(i).fail(n.IsSequence() ? n[i] : n,
                                      "must be an IP address or a network such as 10.0.0.0/16 (no bits set past "
                                      "the prefix), not \"" +
                                          s.peers.allow[i] + "\"");
                     }
                   }
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   if (s.peers.allow.empty()) return;
                   out << YAML::Key << "allow" << YAML::Value << YAML::Flow << s.peers.allow;
                 }});
    t.push_back({"peers", "tls",
                 [](const YAML::Node& n, const context& c, settings& s) {
                   check_keys(n, c, {"cert", "key", "ca", "server_name"});
                   auto& f = s.peers.tls;
                   for (const char* k : {"cert", "key", "ca"}) {
                     if (!n[k]) {
                       c.fail(n, std::string(k) +
                                     " is required (cert and key: the peers' certificate and its key; ca: what a "
                                     "peer's certificate must chain to)");
                     }
                   }
                   const auto file = [&](const char* k) {
                     auto path = as_string(n[k], c.child(k));
                     check_readable(n[k], c.child(k), path);
                     return path;
                   };
                   f.cert = file("cert");
                   f.key = file("key");
                   f.ca = file("ca");
                   if (n["server_name"]) {
                     f.server_name = as_string(n["server_name"], c.child("server_name"));
                     if (!valid_host_name(f.server_name))
                       c.child("server_name").fail(n["server_name"], "must be a DNS name such as berth-peer");
                   }
                   if (const auto why = peer::check_tls(f); !why.empty()) c.fail(n, why);
                 },
                 [](YAML::Emitter& out, const settings& s) {
                   const auto& f = s.peers.tls;
                   if (!f.enabled()) return;
                   out << YAML::Key << "tls" << YAML::Value << YAML::BeginMap;
                   emit(out, "cert", f.cert);
                   emit(out, "key", f.key);
                   emit(out, "ca", f.ca);
                   emit(out, "server_name", f.server_name);
                   out << YAML::EndMap;
                 }});
    t.push_back(duration_row("peers", "stall_timeout", [](settings& s) -> ms& { return s.peers.stall_timeout; }));
    t.push_back(count_row<std::size_t>(
        "peers", "max_uploads", [](settings& s) -> std::size_t& { return s.peers.max_uploads; }, 1, 4096));
    return t;
  }();
  return rows;
}

const std::vector<std::string> k_sections = {"clients", "upstream", "cache", "metadata", "peers"};

// The names of a section's keys, for check_keys and its error message.
std::vector<std::string> names_in(const std::string& section) {
  std::vector<std::string> names;
  for (const auto& row : key_table()) {
    if (row.section == section) names.push_back(row.name);
  }
  if (section.empty()) names.insert(names.end(), k_sections.begin(), k_sections.end());
  return names;
}

void parse_section(const YAML::Node& map, const context& ctx, const std::string& section, settings& s) {
  check_keys(map, ctx, names_in(section));
  for (const auto& row : key_table()) {
    if (row.section != section) continue;
    if (const auto v = map[row.name]) row.parse(v, ctx.child(row.name), s);
  }
}

settings parse_document(std::string_view yaml, const std::string& source, const env_lookup& env) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& ex) {
    throw config_error(source + ":" + std::to_string(ex.mark.line + 1) + ":" + std::to_string(ex.mark.column + 1) +
                       ": not valid YAML: " + ex.msg);
  }
  const context top{source, ""};
  if (!root.IsDefined() || root.IsNull()) throw config_error(source + ": the file is empty");
  settings s;
  s.source = source;
  if (!root.IsMap()) top.fail(root, "must be a mapping");
  if (!root["registries"]) throw config_error(source + ": registries: is required (at least one upstream registry)");
  parse_section(root, top, "", s);
  for (const auto& section : k_sections) {
    const auto node = root[section];
    if (!node) continue;
    if (section == "cache") {
      s.cache.emplace();
      s.cache->max_fraction = 0.8;  // max_size's default
      if (node.IsMap() && !node["dir"])
        top.child("cache").fail(node, "dir is required (where blobs, temp files and the index live)");
    }
    parse_section(node, top.child(section), section, s);
  }

  apply_env(s, env);

  if (!s.default_registry.empty()) {
    bool known = false;
    for (const auto& r : s.registries) {
      for (const auto& n : r.names)
        known = known || upstream::normalize_registry_host(n) == upstream::normalize_registry_host(s.default_registry);
    }
    if (!known) {
      const YAML::Node where = root["default_registry"] ? root["default_registry"] : root;
      top.child("default_registry").fail(where, "\"" + s.default_registry + "\" is not one of the registries' names");
    }
  }
  // The default hand-over socket sits in cache.dir; a Unix socket path has 107 bytes.
  if (s.server.handover_socket.empty() && s.cache &&
      s.cache->dir.size() + std::string_view("/handover.sock").size() > 107) {
    top.child("cache").child("dir").fail(root["cache"] && root["cache"]["dir"] ? root["cache"]["dir"] : root,
                                         "is too long for the hand-over socket in it (" + s.cache->dir +
                                             "/handover.sock must be at most 107 bytes): set handover_socket");
  }
  if (s.peers.enabled()) {
    const auto where = [&](const char* key) {
      return root["peers"] && root["peers"][key] ? root["peers"][key] : root["peers"] ? root["peers"] : root;
    };
    const auto peers = top.child("peers");
    const auto host = s.peers.listen.substr(0, s.peers.listen.rfind(':'));
    if (s.peers.listen.ends_with(":0"))
      peers.child("listen").fail(where("listen"), "needs a port (other nodes connect to it), such as :5051");
    if (host == "0.0.0.0" || host == "[::]") {
      peers.child("listen").fail(where("listen"),
                                 "must be this node's own address (other nodes connect to it), "
                                 "such as status.hostIP through BERTH_PEERS_LISTEN");
    }
    if (s.peers.listen == s.server.listen || s.peers.listen == s.server.admin_listen)
      peers.child("listen").fail(where("listen"), "must differ from listen and admin_listen (peers get blobs only)");
    if (s.peers.secret.empty())
      peers.child("secret_file").fail(where("secret_file"), "is required with peers.listen (the cluster secret)");
    if (!s.cache) peers.child("listen").fail(where("listen"), "needs a cache (peers share what it holds)");
    if (!s.metadata.redis)
      peers.child("listen").fail(where("listen"), "needs metadata.redis (the blob directory lives there)");
  }
  if (s.server.listen == s.server.admin_listen && !s.server.listen.ends_with(":0")) {
    top.child("admin_listen")
        .fail(root["admin_listen"] ? root["admin_listen"] : root,
              "must differ from listen (metrics never share the mirror port)");
  }
  return s;
}
}  // namespace

bool parse_size(std::string_view text, std::uint64_t& bytes, double& fraction) {
  bytes = 0;
  fraction = 0;
  if (text.empty()) return false;
  if (text.back() == '%') {
    double pct = 0;
    try {
      std::size_t used = 0;
      pct = std::stod(std::string(text.substr(0, text.size() - 1)), &used);
      if (used != text.size() - 1) return false;
    } catch (const std::exception&) {
      return false;
    }
    if (!(pct > 0 && pct <= 100)) return false;
    fraction = pct / 100;
    return true;
  }
  std::size_t i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
  if (i == 0 || i > 15) return false;
  const std::uint64_t n = std::stoull(std::string(text.substr(0, i)));
  const auto unit = text.substr(i);
  std::uint64_t mult = 0;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "KB")
    mult = 1000ULL;
  else if (unit == "MB")
    mult = 1000ULL * 1000;
  else if (unit == "GB")
    mult = 1000ULL * 1000 * 1000;
  else if (unit == "TB")
    mult = 1000ULL * 1000 * 1000 * 1000;
  else if (unit == "KiB")
    mult = 1ULL << 10;
  else if (unit == "MiB")
    mult = 1ULL << 20;
  else if (unit == "GiB")
    mult = 1ULL << 30;
  else if (unit == "TiB")
    mult = 1ULL << 40;
  else
    return false;
  if (n > UINT64_MAX / mult) return false;  // would wrap around
  bytes = n * mult;
  return bytes > 0;
}

settings load_file(const std::string& path, const env_lookup& env) {
  std::string text;
  if (!core::read_file(path, text)) throw config_error(path + ": cannot be read");
  return parse(text, path, env);
}

std::string render(const settings& s) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const auto& row : key_table()) {
    if (row.section.empty()) row.render(out, s);
  }
  for (const auto& section : k_sections) {
    if (section == "cache" && !s.cache) continue;
    out << YAML::Key << section << YAML::Value << YAML::BeginMap;
    for (const auto& row : key_table()) {
      if (row.section == section) row.render(out, s);
    }
    out << YAML::EndMap;
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> known_keys() {
  std::vector<std::string> keys;
  for (const auto& row : key_table()) keys.push_back(row.section.empty() ? row.name : row.section + "." + row.name);
  return keys;
}

}  // namespace berth::config
