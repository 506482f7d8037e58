#include "config/config.hpp"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include "core/files.hpp"
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

void check_keys(const YAML::Node& map, const context& ctx, std::initializer_list<const char*> allowed) {
  if (!map.IsMap()) ctx.fail(map, "must be a mapping");
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) ctx.fail(kv.first, "keys must be plain names, not a list or a mapping");
    const auto name = kv.first.as<std::string>();
    bool ok = false;
    for (const char* a : allowed) ok = ok || name == a;
    if (!ok) {
      std::string list;
      for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
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

meta::metadata_options parse_metadata(const YAML::Node& n, const context& ctx) {
  check_keys(n, ctx,
             {"redis", "password_file", "key_prefix", "tag_ttl", "tag_ttl_overrides", "max_stale", "negative_ttl",
              "manifest_ttl", "memory_size", "webhook_secret_file", "secret_file", "timeout", "lock_wait"});
  meta::metadata_options m;
  if (n["redis"]) {
    const auto url = as_string(n["redis"], ctx.child("redis"));
    std::string why;
    auto r = meta::parse_redis_url(url, why);
    if (!r)
      ctx.child("redis").fail(n["redis"],
                              "\"" + url + "\" " + why + " (expected redis://[user[:password]@]host:port/db)");
    m.redis = *r;
    m.redis_url = "redis://" + (r->username.empty() ? "" : r->username + (r->password.empty() ? "@" : ":***@")) +
                  (r->host.find(':') != std::string::npos ? "[" + r->host + "]" : r->host) + ":" +
                  std::to_string(r->port) + "/" + std::to_string(r->db);
  }
  if (n["password_file"]) {
    if (!m.redis) ctx.child("password_file").fail(n["password_file"], "needs metadata.redis");
    m.password_file = as_string(n["password_file"], ctx.child("password_file"));
    check_readable(n["password_file"], ctx.child("password_file"), m.password_file);
    std::string pw;
    if (!core::read_file(m.password_file, pw) || (pw = core::trim_newlines(pw)).empty())
      ctx.child("password_file").fail(n["password_file"], "file " + m.password_file + " is empty or unreadable");
    m.redis->password = pw;
  }
  if (n["key_prefix"]) m.key_prefix = as_string(n["key_prefix"], ctx.child("key_prefix"));
  if (n["tag_ttl"]) m.tag_ttl = as_duration(n["tag_ttl"], ctx.child("tag_ttl"), true);
  if (auto o = n["tag_ttl_overrides"]) {
    if (!o.IsSequence()) ctx.child("tag_ttl_overrides").fail(o, "must be a list of {pattern, ttl}");
    for (std::size_t i = 0; i < o.size(); ++i) {
      const auto c = ctx.child("tag_ttl_overrides").item(i);
      check_keys(o[i], c, {"pattern", "ttl"});
      if (!o[i]["pattern"] || !o[i]["ttl"]) c.fail(o[i], "needs both pattern and ttl");
      meta::ttl_override t;
      t.pattern = as_string(o[i]["pattern"], c.child("pattern"));
      if (t.pattern.empty()) c.child("pattern").fail(o[i]["pattern"], "must not be empty");
      t.ttl = as_duration(o[i]["ttl"], c.child("ttl"), true);
      m.tag_ttl_overrides.push_back(t);
    }
  }
  if (n["max_stale"]) m.max_stale = as_duration(n["max_stale"], ctx.child("max_stale"), true);
  if (n["negative_ttl"]) m.negative_ttl = as_duration(n["negative_ttl"], ctx.child("negative_ttl"), true);
  if (n["manifest_ttl"]) m.manifest_ttl = as_duration(n["manifest_ttl"], ctx.child("manifest_ttl"));
  if (n["lock_wait"]) m.lock_wait = as_duration(n["lock_wait"], ctx.child("lock_wait"), true);
  if (n["memory_size"]) {
    const auto text = as_string(n["memory_size"], ctx.child("memory_size"));
    std::uint64_t bytes = 0;
    double fraction = 0;
    if (!parse_size(text, bytes, fraction) || fraction > 0 || bytes < (1 << 20))
      ctx.child("memory_size")
          .fail(n["memory_size"], "must be a size of at least 1MiB such as 64MiB, not \"" + text + "\"");
    m.memory_bytes = bytes;
  }
  if (n["webhook_secret_file"]) {
    m.webhook_secret_file = as_string(n["webhook_secret_file"], ctx.child("webhook_secret_file"));
    if (m.webhook_secret_file.empty() || m.webhook_secret_file.front() != '/')
      ctx.child("webhook_secret_file").fail(n["webhook_secret_file"], "must be an absolute path");
  }
  if (n["secret_file"]) {
    const auto c = ctx.child("secret_file");
    if (!m.redis) c.fail(n["secret_file"], "needs metadata.redis (it signs what nodes share there)");
    m.secret_file = as_string(n["secret_file"], c);
    check_readable(n["secret_file"], c, m.secret_file);
    if (!core::read_file(m.secret_file, m.secret) || (m.secret = core::trim_newlines(m.secret)).size() < 16)
      c.fail(n["secret_file"], "file " + m.secret_file + " must hold a secret of at least 16 characters");
  }
  if (n["timeout"]) {
    const auto t = as_duration(n["timeout"], ctx.child("timeout"));
    if (m.redis) m.redis->command_timeout = t;  // without a backend there is nothing to time out
  }
  return m;
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
  check_keys(root, top,
             {"listen", "admin_listen", "threads", "log_level", "access_log", "shutdown_timeout", "registries",
              "default_registry", "upstream", "clients", "cache", "metadata", "watchdog_timeout"});
  settings s;
  s.source = source;
  if (root["listen"]) {
    s.server.listen = as_string(root["listen"], top.child("listen"));
    if (!valid_listen(s.server.listen))
      top.child("listen").fail(root["listen"], "must be IP:port such as 127.0.0.1:5050");
  }
  if (root["admin_listen"]) {
    s.server.admin_listen = as_string(root["admin_listen"], top.child("admin_listen"));
    if (!valid_listen(s.server.admin_listen))
      top.child("admin_listen").fail(root["admin_listen"], "must be IP:port such as 127.0.0.1:9095");
  }
  if (root["threads"])
    s.server.threads = static_cast<unsigned>(as_count(root["threads"], top.child("threads"), 0, 256));
  if (root["log_level"]) {
    const auto l = as_string(root["log_level"], top.child("log_level"));
    if (!log::parse_level(l, s.log_level))
      top.child("log_level").fail(root["log_level"], "must be debug, info, warn or error");
  }
  if (root["access_log"]) s.server.access_log = as_bool(root["access_log"], top.child("access_log"));
  if (root["shutdown_timeout"])
    s.server.shutdown_timeout = as_duration(root["shutdown_timeout"], top.child("shutdown_timeout"));
  if (root["watchdog_timeout"]) {
    s.server.watchdog_timeout = as_duration(root["watchdog_timeout"], top.child("watchdog_timeout"), true);
    if (s.server.watchdog_timeout.count() > 0 && s.server.watchdog_timeout < std::chrono::milliseconds(500))
      top.child("watchdog_timeout").fail(root["watchdog_timeout"], "must be 0s (off) or at least 500ms");
  }
  if (auto c = root["clients"]) {
    const auto ctx = top.child("clients");
    check_keys(c, ctx,
               {"idle_timeout", "write_timeout", "max_header_bytes", "max_connections", "admin_max_connections"});
    if (c["idle_timeout"]) s.server.idle_timeout = as_duration(c["idle_timeout"], ctx.child("idle_timeout"));
    if (c["write_timeout"]) s.server.write_timeout = as_duration(c["write_timeout"], ctx.child("write_timeout"));
    if (c["max_header_bytes"])
      s.server.max_header_bytes = as_count(c["max_header_bytes"], ctx.child("max_header_bytes"), 1024, 1 << 20);
    if (c["max_connections"])
      s.server.max_connections = as_count(c["max_connections"], ctx.child("max_connections"), 0, 1 << 20);
    if (c["admin_max_connections"])
      s.server.admin_max_connections =
          as_count(c["admin_max_connections"], ctx.child("admin_max_connections"), 0, 1 << 20);
  }
  if (auto u = root["upstream"]) {
    const auto ctx = top.child("upstream");
    check_keys(u, ctx,
               {"connect_timeout", "response_timeout", "read_timeout", "idle_timeout", "pool_wait_timeout",
                "max_connections_per_host", "max_idle_per_host", "max_redirects", "min_rate", "min_rate_period"});
    auto& p = s.upstream;
    if (u["connect_timeout"]) p.connect_timeout = as_duration(u["connect_timeout"], ctx.child("connect_timeout"));
    if (u["response_timeout"]) p.response_timeout = as_duration(u["response_timeout"], ctx.child("response_timeout"));
    if (u["read_timeout"]) p.read_timeout = as_duration(u["read_timeout"], ctx.child("read_timeout"));
    if (u["idle_timeout"]) p.idle_timeout = as_duration(u["idle_timeout"], ctx.child("idle_timeout"));
    if (u["pool_wait_timeout"])
      p.pool_wait_timeout = as_duration(u["pool_wait_timeout"], ctx.child("pool_wait_timeout"));
    if (u["max_connections_per_host"])
      p.max_connections_per_host =
          as_count(u["max_connections_per_host"], ctx.child("max_connections_per_host"), 1, 10000);
    if (u["max_idle_per_host"])
      p.max_idle_per_host = as_count(u["max_idle_per_host"], ctx.child("max_idle_per_host"), 0, 10000);
    if (u["max_redirects"]) p.max_redirects = as_count(u["max_redirects"], ctx.child("max_redirects"), 0, 20);
    if (u["min_rate"]) {
      const auto text = as_string(u["min_rate"], ctx.child("min_rate"));
      std::uint64_t bytes = 0;
      double fraction = 0;
      if (text != "0" && (!parse_size(text, bytes, fraction) || fraction > 0))
        ctx.child("min_rate")
            .fail(u["min_rate"], "must be bytes per second such as 32KiB (0 for no floor), not \"" + text + "\"");
      p.min_rate = bytes;
    }
    if (u["min_rate_period"]) p.min_rate_period = as_duration(u["min_rate_period"], ctx.child("min_rate_period"));
  }
  if (auto c = root["cache"]) {
    const auto ctx = top.child("cache");
    check_keys(c, ctx, {"dir", "max_size", "low_watermark", "fill_stall_timeout", "authorization_ttl", "zero_copy"});
    if (c["zero_copy"]) s.server.zero_copy = as_bool(c["zero_copy"], ctx.child("zero_copy"));
    store::store_options o;
    if (!c["dir"]) ctx.fail(c, "dir is required (where blobs, temp files and the index live)");
    o.dir = as_string(c["dir"], ctx.child("dir"));
    if (o.dir.empty() || o.dir.front() != '/') ctx.child("dir").fail(c["dir"], "must be an absolute path");
    while (o.dir.size() > 1 && o.dir.back() == '/') o.dir.pop_back();
    if (c["max_size"]) {
      const auto text = as_string(c["max_size"], ctx.child("max_size"));
      if (!parse_size(text, o.max_bytes, o.max_fraction)) {
        ctx.child("max_size")
            .fail(c["max_size"],
                  "must be a size such as 50GiB, 500MB or a percentage such as 80%, not \"" + text + "\"");
      }
    } else {
      o.max_fraction = 0.8;
    }
    if (c["low_watermark"]) {
      const auto text = as_string(c["low_watermark"], ctx.child("low_watermark"));
      try {
        std::size_t used = 0;
        o.low_watermark = std::stod(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
      } catch (const std::exception&) {
        ctx.child("low_watermark").fail(c["low_watermark"], "must be a number between 0 and 1");
      }
      if (!(o.low_watermark > 0 && o.low_watermark < 1))
        ctx.child("low_watermark").fail(c["low_watermark"], "must be between 0 and 1 (exclusive)");
    }
    if (c["fill_stall_timeout"]) o.reader_stall = as_duration(c["fill_stall_timeout"], ctx.child("fill_stall_timeout"));
    if (c["authorization_ttl"])
      o.authorization_ttl = as_duration(c["authorization_ttl"], ctx.child("authorization_ttl"), true);
    s.cache = o;
  }
  if (auto m = root["metadata"]) s.metadata = parse_metadata(m, top.child("metadata"));
  const auto regs = root["registries"];
  if (!regs) throw config_error(source + ": registries: is required (at least one upstream registry)");
  if (!regs.IsSequence() || regs.size() == 0)
    top.child("registries").fail(regs, "must be a non-empty list of registries");
  std::set<std::string> seen;
  for (std::size_t i = 0; i < regs.size(); ++i) {
    const auto ctx = top.child("registries").item(i);
    s.registries.push_back(parse_registry(regs[i], ctx));
    for (const auto& n : s.registries.back().names) {
      if (!seen.insert(upstream::normalize_registry_host(n)).second)
        ctx.child("names").fail(regs[i]["names"], "\"" + n + "\" is already used by another registry");
    }
  }
  if (root["default_registry"]) s.default_registry = as_string(root["default_registry"], top.child("default_registry"));

  apply_env(s, env);

  if (!s.default_registry.empty() && !seen.contains(upstream::normalize_registry_host(s.default_registry))) {
    const YAML::Node where = root["default_registry"] ? root["default_registry"] : root;
    top.child("default_registry").fail(where, "\"" + s.default_registry + "\" is not one of the registries' names");
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
  auto ms = [](std::chrono::milliseconds d) {
    const auto n = d.count();
    if (n != 0 && n % 3600000 == 0) return std::to_string(n / 3600000) + "h";
    if (n != 0 && n % 60000 == 0) return std::to_string(n / 60000) + "m";
    if (n % 1000 == 0) return std::to_string(n / 1000) + "s";
    return std::to_string(n) + "ms";
  };
  out << YAML::BeginMap;
  out << YAML::Key << "listen" << YAML::Value << s.server.listen;
  out << YAML::Key << "admin_listen" << YAML::Value << s.server.admin_listen;
  out << YAML::Key << "threads" << YAML::Value << s.server.threads;
  out << YAML::Key << "log_level" << YAML::Value << std::string(log::level_name(s.log_level));
  out << YAML::Key << "access_log" << YAML::Value << s.server.access_log;
  out << YAML::Key << "shutdown_timeout" << YAML::Value << ms(s.server.shutdown_timeout);
  out << YAML::Key << "watchdog_timeout" << YAML::Value << ms(s.server.watchdog_timeout);
  out << YAML::Key << "clients" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "idle_timeout" << YAML::Value << ms(s.server.idle_timeout);
  out << YAML::Key << "write_timeout" << YAML::Value << ms(s.server.write_timeout);
  out << YAML::Key << "max_header_bytes" << YAML::Value << s.server.max_header_bytes;
  out << YAML::Key << "max_connections" << YAML::Value << s.server.max_connections;
  out << YAML::Key << "admin_max_connections" << YAML::Value << s.server.admin_max_connections;
  out << YAML::EndMap;
  out << YAML::Key << "upstream" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "connect_timeout" << YAML::Value << ms(s.upstream.connect_timeout);
  out << YAML::Key << "response_timeout" << YAML::Value << ms(s.upstream.response_timeout);
  out << YAML::Key << "read_timeout" << YAML::Value << ms(s.upstream.read_timeout);
  out << YAML::Key << "idle_timeout" << YAML::Value << ms(s.upstream.idle_timeout);
  out << YAML::Key << "pool_wait_timeout" << YAML::Value << ms(s.upstream.pool_wait_timeout);
  out << YAML::Key << "max_connections_per_host" << YAML::Value << s.upstream.max_connections_per_host;
  out << YAML::Key << "max_idle_per_host" << YAML::Value << s.upstream.max_idle_per_host;
  out << YAML::Key << "max_redirects" << YAML::Value << s.upstream.max_redirects;
  out << YAML::Key << "min_rate" << YAML::Value << s.upstream.min_rate;
  out << YAML::Key << "min_rate_period" << YAML::Value << ms(s.upstream.min_rate_period);
  out << YAML::EndMap;
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
  if (!s.default_registry.empty()) out << YAML::Key << "default_registry" << YAML::Value << s.default_registry;
  if (s.cache) {
    out << YAML::Key << "cache" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "dir" << YAML::Value << s.cache->dir;
    out << YAML::Key << "max_size" << YAML::Value
        << (s.cache->max_bytes > 0 ? std::to_string(s.cache->max_bytes)
                                   : std::to_string(static_cast<int>(s.cache->max_fraction * 100 + 0.5)) + "%");
    char watermark[32];
    std::snprintf(watermark, sizeof watermark, "%g", s.cache->low_watermark);
    out << YAML::Key << "low_watermark" << YAML::Value << std::string(watermark);
    out << YAML::Key << "fill_stall_timeout" << YAML::Value << ms(s.cache->reader_stall);
    out << YAML::Key << "authorization_ttl" << YAML::Value << ms(s.cache->authorization_ttl);
    out << YAML::Key << "zero_copy" << YAML::Value << s.server.zero_copy;
    out << YAML::EndMap;
  }
  const auto& m = s.metadata;
  out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
  // The URL as parsed, with any password masked; the password file is named, never read out.
  if (m.redis) out << YAML::Key << "redis" << YAML::Value << m.redis_url;
  if (!m.password_file.empty()) out << YAML::Key << "password_file" << YAML::Value << m.password_file;
  out << YAML::Key << "key_prefix" << YAML::Value << YAML::DoubleQuoted << m.key_prefix;
  out << YAML::Key << "tag_ttl" << YAML::Value << ms(m.tag_ttl);
  if (!m.tag_ttl_overrides.empty()) {
    out << YAML::Key << "tag_ttl_overrides" << YAML::Value << YAML::BeginSeq;
    for (const auto& o : m.tag_ttl_overrides) {
      out << YAML::Flow << YAML::BeginMap << YAML::Key << "pattern" << YAML::Value << YAML::DoubleQuoted << o.pattern
          << YAML::Key << "ttl" << YAML::Value << ms(o.ttl) << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::Key << "max_stale" << YAML::Value << ms(m.max_stale);
  out << YAML::Key << "negative_ttl" << YAML::Value << ms(m.negative_ttl);
  out << YAML::Key << "manifest_ttl" << YAML::Value << ms(m.manifest_ttl);
  out << YAML::Key << "memory_size" << YAML::Value
      << (m.memory_bytes % (1 << 20) == 0 ? std::to_string(m.memory_bytes >> 20) + "MiB"
                                          : std::to_string(m.memory_bytes));
  if (m.redis) out << YAML::Key << "timeout" << YAML::Value << ms(m.redis->command_timeout);
  if (m.redis) out << YAML::Key << "lock_wait" << YAML::Value << ms(m.lock_wait);
  if (!m.webhook_secret_file.empty()) out << YAML::Key << "webhook_secret_file" << YAML::Value << m.webhook_secret_file;
  if (!m.secret_file.empty()) out << YAML::Key << "secret_file" << YAML::Value << m.secret_file;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace berth::config
