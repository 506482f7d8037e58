#include "containerd/hosts_toml.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace berth::containerd {

namespace fs = std::filesystem;

namespace {

bool safe_registry(const std::string& r) {
  if (r.empty() || r.size() > 255 || r == "." || r == ".." || r.front() == '.') return false;
  for (char c : r) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '-' || c == ':' || c == '_';
    if (!ok) return false;
  }
  return true;
}

bool safe_url(const std::string& u) {
  if (u.rfind("http://", 0) != 0 && u.rfind("https://", 0) != 0) return false;
  for (char c : u) {
    if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == ' ') return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> lines_of(std::string_view text) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (start < text.size()) {
    auto nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    out.push_back(text.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

bool is_table_header(std::string_view line) {
  line = trim(line);
  return !line.empty() && line.front() == '[';
}

// [host."<mirror>"] or [host."<mirror>".header] (also with single quotes).
bool is_mirror_table(std::string_view line, std::string_view mirror) {
  line = trim(line);
  for (const char* q : {"\"", "'"}) {
    const std::string prefix = std::string("[host.") + q + std::string(mirror) + q;
    if (line.rfind(prefix, 0) == 0) {
      const char next = line.size() > prefix.size() ? line[prefix.size()] : '\0';
      if (next == ']' || next == '.') return true;
    }
  }
  return false;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot be read");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A header value goes into a TOML basic string as is: printable ASCII without quotes
// or backslashes (base64 credentials are).
bool safe_header_value(const std::string& v) {
  if (v.empty() || v.size() > 8192) return false;
  for (char c : v) {
    if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return false;
  }
  return true;
}

// The first key of a table header or a top-level key line, unquoted, spaces dropped:
// "[ header ]", "[\"header\".x]" and "header = {...}" all give "header".
std::string first_key(std::string_view line) {
  line = trim(line);
  if (!line.empty() && line.front() == '[') line.remove_prefix(line[1] == '[' ? 2 : 1);
  std::string key;
  for (char c : line) {
    if (c == ' ' || c == '\t' || c == '"' || c == '\'') continue;
    if (c == '.' || c == ']' || c == '=') break;
    key.push_back(c);
  }
  return key;
}

// A table or key that defines the `server`'s own headers: a [header] table (any
// spelling), or a `header` key before the first table.
bool defines_server_headers(std::string_view line, bool in_tables) {
  const auto t = trim(line);
  if (t.empty() || t.front() == '#') return false;
  if (t.front() == '[') return first_key(t) == "header";
  return !in_tables && first_key(t) == "header";
}

// Written to a new temp file created with its final mode (a file holding credentials
// is never readable by others, not even for a moment), synced, then renamed.
void write_atomically(const std::string& path, const std::string& content, bool secret = false) {
  const std::string tmp = path + ".berth-tmp";
  ::unlink(tmp.c_str());  // a leftover of a crash, or anything planted there: never followed
  const mode_t mode = secret ? 0600 : 0644;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) throw std::runtime_error(tmp + ": cannot be written: " + std::strerror(errno));
  bool ok = ::fchmod(fd, mode) == 0;  // exactly, whatever the umask
  std::size_t done = 0;
  while (ok && done < content.size()) {
    const auto n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw std::runtime_error(tmp + ": write failed: " + std::strerror(err));
  }
  fs::rename(tmp, path);
}

}  // namespace

std::string hosts_dir(const std::string& certs_dir, const std::string& registry) {
  return (fs::path(certs_dir) / registry).string();
}
std::string hosts_file(const std::string& certs_dir, const std::string& registry) {
  return (fs::path(certs_dir) / registry / "hosts.toml").string();
}
std::string backup_file(const std::string& certs_dir, const std::string& registry) {
  return (fs::path(certs_dir) / registry / "hosts.toml.berth-orig").string();
}

std::string strip(std::string_view existing, std::string_view mirror) {
  std::string out;
  bool in_block = false;  // inside Berth's marked block
  bool in_table = false;  // inside another table for the same mirror URL
  for (auto line : lines_of(existing)) {
    const auto t = trim(line);
    if (t == k_block_begin) {
      in_block = true;
      continue;
    }
    if (in_block) {
      if (t == k_block_end) in_block = false;
      continue;
    }
    if (is_table_header(line)) in_table = is_mirror_table(line, mirror);
    if (in_table) continue;
    out.append(line);
    out.push_back('\n');
  }
  if (!existing.empty() && existing.back() != '\n' && !out.empty()) out.pop_back();
  return out;
}

std::string render(const hosts_options& o, const std::optional<std::string>& existing) {
  if (!safe_registry(o.registry)) throw std::invalid_argument("not a registry host name: " + o.registry);
  if (!safe_url(o.mirror)) throw std::invalid_argument("mirror must be an http:// or https:// URL: " + o.mirror);
  const std::string server = !o.server.empty()           ? o.server
                             : o.registry == "docker.io" ? std::string("https://registry-1.docker.io")
                                                         : "https://" + o.registry;
  if (!safe_url(server)) throw std::invalid_argument("server must be an http:// or https:// URL: " + server);

  std::string block;
  block += k_block_begin;
  block += "\n[host.\"" + o.mirror + "\"]\n";
  block += "  capabilities = [\"pull\", \"resolve\"]\n";
  if (!o.dial_timeout.empty()) block += "  dial_timeout = \"" + o.dial_timeout + "\"\n";
  block += k_block_end;
  block += "\n";
  // The server's own [header] table: a table header is absolute in TOML, so it may
  // follow the host tables; inside Berth's markers, so uninstall removes it too.
  std::string credentials;
  if (!o.fallback_authorization.empty()) {
    if (!safe_header_value(o.fallback_authorization)) {
      throw std::invalid_argument("the fallback Authorization value cannot be written into hosts.toml");
    }
    credentials = "\n" + std::string(k_block_begin) + "\n[header]\n  Authorization = \"" + o.fallback_authorization +
                  "\"\n" + std::string(k_block_end) + "\n";
  }

  if (!existing) {
    // `ca` at the top level is the fallback server's CA: without it a node that does
    // not trust Harbor's CA system-wide fails TLS exactly when Berth is down.
    std::string top = std::string(k_created_marker) + "\nserver = \"" + server + "\"\n";
    if (!o.ca.empty()) top += "ca = \"" + std::string(k_ca_file) + "\"\n";
    return top + "\n" + block + credentials;
  }
  // Top-level keys (server, ca, ...) must stay before the first table; Berth's
  // table goes right after them, so containerd tries it before any other host.
  const std::string kept = strip(*existing, o.mirror);
  const auto lines = lines_of(kept);
  std::string head, tail;
  bool in_tables = false;
  for (auto line : lines) {
    if (!in_tables && is_table_header(line)) in_tables = true;
    if (!credentials.empty() && defines_server_headers(line, in_tables)) {
      // A second [header] table is a TOML error, and containerd ignores a file it
      // cannot parse: that node would lose its mirror and its fallback.
      throw std::invalid_argument("hosts.toml for " + o.registry +
                                  " already has a [header] table for its server: put the Authorization "
                                  "header there yourself, or remove the table, to use fallback credentials");
    }
    (in_tables ? tail : head).append(line).push_back('\n');
  }
  while (head.size() >= 2 && head.ends_with("\n\n")) head.pop_back();
  std::string out = head;
  if (!out.empty() && !out.ends_with("\n\n")) out += "\n";
  out += block;
  if (!tail.empty()) out += "\n" + tail;
  return out + credentials;
}

outcome install(const std::string& certs_dir, const hosts_options& o) {
  const auto path = hosts_file(certs_dir, o.registry);
  const auto backup = backup_file(certs_dir, o.registry);
  std::optional<std::string> existing;
  if (fs::exists(path)) existing = read_file(path);
  const auto next = render(o, existing);
  if (existing && *existing == next) return {path, "unchanged"};
  fs::create_directories(hosts_dir(certs_dir, o.registry));
  if (!existing && !o.ca.empty()) {
    write_atomically((fs::path(hosts_dir(certs_dir, o.registry)) / k_ca_file).string(), read_file(o.ca));
  }
  const bool ours = existing && (existing->find(k_block_begin) != std::string::npos);
  if (existing && !ours && !fs::exists(backup)) write_atomically(backup, *existing);
  write_atomically(path, next, !o.fallback_authorization.empty());
  return {path, existing ? "updated" : "created"};
}

outcome uninstall(const std::string& certs_dir, const std::string& registry, const std::string& mirror) {
  if (!safe_registry(registry)) throw std::invalid_argument("not a registry host name: " + registry);
  const auto path = hosts_file(certs_dir, registry);
  const auto backup = backup_file(certs_dir, registry);
  std::error_code ignored;
  fs::remove(fs::path(hosts_dir(certs_dir, registry)) / k_ca_file, ignored);  // the CA copy install made, if any
  if (fs::exists(backup)) {
    fs::rename(backup, path);
    return {path, "restored"};
  }
  if (!fs::exists(path)) return {path, "nothing to do"};
  const auto text = read_file(path);
  if (text.rfind(k_created_marker, 0) == 0) {
    fs::remove(path);
    fs::remove(hosts_dir(certs_dir, registry), ignored);  // only if empty
    return {path, "removed"};
  }
  const auto stripped = strip(text, mirror);
  if (stripped == text) return {path, "nothing to do"};
  write_atomically(path, stripped);
  return {path, "updated"};
}

}  // namespace berth::containerd
