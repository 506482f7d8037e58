#include "config/config.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <unistd.h>

using namespace berth;
using config::config_error;

namespace {

config::env_lookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}
const config::env_lookup no_env = env_of({});

const char* k_example = R"(
listen: 127.0.0.1:5050
admin_listen: 127.0.0.1:9095
registries:
  - names: [registry.example.ts.net]
    endpoint: https://registry.example.ts.net
    credentials: /etc/berth/harbor-pull/.dockerconfigjson
    repositories: ["library/*", "platform/**", "**"]
default_registry: registry.example.ts.net
)";

std::string error_of(const std::string& yaml, const config::env_lookup& env = no_env) {
  try {
    config::parse(yaml, "berth.yaml", env);
  } catch (const config_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Config, ParsesTheIssueExample) {
  auto s = config::parse(k_example, "berth.yaml", no_env);
  EXPECT_EQ(s.server.listen, "127.0.0.1:5050");
  EXPECT_EQ(s.server.admin_listen, "127.0.0.1:9095");
  ASSERT_EQ(s.registries.size(), 1u);
  const auto& r = s.registries[0];
  EXPECT_EQ(r.names, std::vector<std::string>{"registry.example.ts.net"});
  EXPECT_EQ(r.endpoint, "https://registry.example.ts.net");
  EXPECT_EQ(r.credentials.docker_config_file, "/etc/berth/harbor-pull/.dockerconfigjson");
  EXPECT_EQ(r.credentials.endpoint_host, "registry.example.ts.net");
  EXPECT_EQ(r.repositories.size(), 3u);
  EXPECT_EQ(s.default_registry, "registry.example.ts.net");
}

TEST(Config, DefaultsAreDocumentedOnes) {
  auto s = config::parse("registries: [{names: [r.example]}]", "b.yaml", no_env);
  EXPECT_EQ(s.server.listen, "127.0.0.1:5050");
  EXPECT_EQ(s.server.admin_listen, "127.0.0.1:9095");
  EXPECT_EQ(s.registries[0].endpoint, "https://r.example");  // endpoint defaults to the first name
  EXPECT_EQ(s.upstream.connect_timeout, std::chrono::seconds(5));
  EXPECT_EQ(s.log_level, log::level::info);
}

TEST(Config, ErrorsNameFileLineAndKey) {
  const auto e = error_of("registries:\n  - names: [r.example]\n    endpoint: ftp://r.example\n");
  EXPECT_NE(e.find("berth.yaml:3:15: registries[0].endpoint: must be an http:// or https:// URL"), std::string::npos)
      << e;
}

TEST(Config, UnknownKeysAreErrors) {
  const auto e = error_of("registries: [{names: [r]}]\nlisten_addr: 1\n");
  EXPECT_NE(e.find("berth.yaml:2:1: listen_addr: unknown key"), std::string::npos) << e;
  const auto e2 = error_of("registries:\n  - names: [r]\n    credential: /x\n");
  EXPECT_NE(e2.find("registries[0].credential: unknown key"), std::string::npos) << e2;
}

TEST(Config, ManyWaysToBeWrong) {
  struct bad {
    const char* yaml;
    const char* says;
  };
  for (const auto& b : std::vector<bad>{
           {"listen: 127.0.0.1:5050\n", "registries: is required"},
           {"registries: []\n", "must be a non-empty list"},
           {"registries: [{endpoint: https://x}]\n", "names is required"},
           {"registries: [{names: [a b]}]\n", "is not a registry host name"},
           {"registries: [{names: [r]}, {names: [R]}]\n", "already used"},
           {"registries: [{names: [r]}]\nlisten: localhost:5050\n", "listen: must be IP:port"},
           {"registries: [{names: [r]}]\nlisten: 127.0.0.1:99999\n", "listen: must be IP:port"},
           {"registries: [{names: [r]}]\ndefault_registry: other\n", "is not one of the registries' names"},
           {"registries: [{names: [r]}]\nthreads: many\n", "threads: must be a whole number"},
           {"registries: [{names: [r]}]\nlog_level: loud\n", "log_level: must be debug, info, warn or error"},
           {"registries: [{names: [r]}]\nupstream: {connect_timeout: soon}\n",
            "upstream.connect_timeout: must be a duration"},
           {"registries: [{names: [r], repositories: [\"Library/*\"]}]\n", "is not a repository pattern"},
           {"registries: [{names: [r], ca_file: /nonexistent/ca.pem}]\n",
            "ca_file: file /nonexistent/ca.pem cannot be read"},
           {"registries: [{names: [r], credentials: /a, username_file: /b, password_file: /c}]\n", "not both"},
           {"registries: [{names: [r], username_file: /b}]\n", "go together"},
           {"registries: [{names: [r], endpoint: \"https://user:pw@r\"}]\n", "with no path, user or query"},
           {"registries: [{names: [r]}]\nlisten: 127.0.0.1:5050\nadmin_listen: 127.0.0.1:5050\n",
            "must differ from listen"},
           {"registries: [{names: [r]\n", "not valid YAML"},
           {"", "the file is empty"},
       }) {
    const auto e = error_of(b.yaml);
    EXPECT_NE(e.find(b.says), std::string::npos) << "yaml: " << b.yaml << "\nerror: " << e;
    EXPECT_EQ(e.rfind("berth.yaml", 0), 0u) << e;  // every message starts with the file
  }
}

TEST(Config, EnvironmentOverrides) {
  auto s = config::parse(k_example, "berth.yaml",
                         env_of({{"BERTH_LISTEN", "0.0.0.0:6000"},
                                 {"BERTH_ADMIN_LISTEN", "127.0.0.1:7000"},
                                 {"BERTH_LOG_LEVEL", "debug"},
                                 {"BERTH_THREADS", "3"},
                                 {"BERTH_ACCESS_LOG", "false"}}));
  EXPECT_EQ(s.server.listen, "0.0.0.0:6000");
  EXPECT_EQ(s.server.admin_listen, "127.0.0.1:7000");
  EXPECT_EQ(s.log_level, log::level::debug);
  EXPECT_EQ(s.server.threads, 3u);
  EXPECT_FALSE(s.server.access_log);
  const auto e = error_of(k_example, env_of({{"BERTH_THREADS", "x"}}));
  EXPECT_NE(e.find("environment BERTH_THREADS: must be a number"), std::string::npos) << e;
  const auto e2 = error_of(k_example, env_of({{"BERTH_DEFAULT_REGISTRY", "nope"}}));
  EXPECT_NE(e2.find("default_registry"), std::string::npos) << e2;
}

TEST(Config, RenderNamesFilesButNoSecrets) {
  auto s = config::parse(k_example, "berth.yaml", no_env);
  const auto out = config::render(s);
  EXPECT_NE(out.find("credentials: /etc/berth/harbor-pull/.dockerconfigjson"), std::string::npos);
  EXPECT_NE(out.find("listen: 127.0.0.1:5050"), std::string::npos);
  // The rendering is itself a valid config that parses to the same thing.
  auto again = config::parse(out, "rendered.yaml", no_env);
  EXPECT_EQ(again.registries[0].repositories, s.registries[0].repositories);
  EXPECT_EQ(again.registries[0].endpoint, s.registries[0].endpoint);
  EXPECT_EQ(again.upstream.read_timeout, s.upstream.read_timeout);
}

TEST(Duration, Parses) {
  std::chrono::milliseconds d{};
  ASSERT_TRUE(config::parse_duration("30s", d));
  EXPECT_EQ(d, std::chrono::seconds(30));
  ASSERT_TRUE(config::parse_duration("250ms", d));
  EXPECT_EQ(d.count(), 250);
  ASSERT_TRUE(config::parse_duration("1h30m", d));
  EXPECT_EQ(d, std::chrono::minutes(90));
  ASSERT_TRUE(config::parse_duration("5", d));
  EXPECT_EQ(d, std::chrono::seconds(5));
  EXPECT_FALSE(config::parse_duration("", d));
  EXPECT_FALSE(config::parse_duration("5x", d));
  EXPECT_FALSE(config::parse_duration("s", d));
  EXPECT_FALSE(config::parse_duration("5 s", d));
}

TEST(Config, CacheSection) {
  auto s = config::parse(
      "registries: [{names: [r]}]\ncache:\n  dir: /var/lib/berth/\n  max_size: 50GiB\n  low_watermark: 0.9\n", "b.yaml",
      no_env);
  ASSERT_TRUE(s.cache);
  EXPECT_EQ(s.cache->dir, "/var/lib/berth");
  EXPECT_EQ(s.cache->max_bytes, 50ULL << 30);
  EXPECT_DOUBLE_EQ(s.cache->low_watermark, 0.9);
  auto pct = config::parse("registries: [{names: [r]}]\ncache: {dir: /c, max_size: 80%}\n", "b.yaml", no_env);
  EXPECT_DOUBLE_EQ(pct.cache->max_fraction, 0.8);
  EXPECT_EQ(pct.cache->max_bytes, 0u);
  EXPECT_FALSE(config::parse("registries: [{names: [r]}]\n", "b.yaml", no_env).cache);  // off unless configured
  // The rendering round-trips.
  auto again = config::parse(config::render(s), "r.yaml", no_env);
  EXPECT_EQ(again.cache->max_bytes, s.cache->max_bytes);
}

TEST(Config, CacheErrors) {
  EXPECT_NE(error_of("registries: [{names: [r]}]\ncache: {max_size: 1GiB}\n").find("cache: dir is required"),
            std::string::npos);
  EXPECT_NE(
      error_of("registries: [{names: [r]}]\ncache: {dir: relative}\n").find("cache.dir: must be an absolute path"),
      std::string::npos);
  EXPECT_NE(
      error_of("registries: [{names: [r]}]\ncache: {dir: /c, max_size: lots}\n").find("cache.max_size: must be a size"),
      std::string::npos);
  EXPECT_NE(error_of("registries: [{names: [r]}]\ncache: {dir: /c, low_watermark: 1.5}\n")
                .find("cache.low_watermark: must be between 0 and 1"),
            std::string::npos);
  EXPECT_NE(error_of("registries: [{names: [r]}]\ncache: {dir: /c, size: 1}\n").find("cache.size: unknown key"),
            std::string::npos);
}

TEST(Config, MetadataSection) {
  const auto pw = std::filesystem::temp_directory_path() / ("berth-redis-pw-" + std::to_string(::getpid()));
  { std::ofstream(pw) << "s3cret-for-test\n"; }
  auto s = config::parse(
      "registries: [{names: [r]}]\nmetadata:\n  redis: redis://berth@10.0.0.5:6380/2\n"
      "  password_file: " +
          pw.string() +
          "\n  tag_ttl: 0s\n  tag_ttl_overrides: [{pattern: \"v*.*.*\", ttl: 10m}]\n"
          "  max_stale: 2h\n  webhook_secret_file: /etc/berth/webhook\n  timeout: 250ms\n",
      "b.yaml", no_env);
  ASSERT_TRUE(s.metadata.redis);
  EXPECT_EQ(s.metadata.redis->host, "10.0.0.5");
  EXPECT_EQ(s.metadata.redis->port, 6380);
  EXPECT_EQ(s.metadata.redis->db, 2);
  EXPECT_EQ(s.metadata.redis->username, "berth");
  EXPECT_EQ(s.metadata.redis->password, "s3cret-for-test");
  EXPECT_EQ(s.metadata.redis->command_timeout, std::chrono::milliseconds(250));
  EXPECT_EQ(s.metadata.tag_ttl, std::chrono::milliseconds(0));
  EXPECT_EQ(s.metadata.ttl_for("v1.2.3"), std::chrono::minutes(10));
  EXPECT_EQ(s.metadata.max_stale, std::chrono::hours(2));
  // Rendered without the password, and the rendering round-trips.
  const auto out = config::render(s);
  EXPECT_EQ(out.find("s3cret"), std::string::npos);
  auto again = config::parse(out, "r.yaml", no_env);
  EXPECT_EQ(again.metadata.redis->port, 6380);
  EXPECT_EQ(again.metadata.tag_ttl_overrides.size(), 1u);
  // A password in the URL is masked too.
  auto inline_pw = config::parse("registries: [{names: [r]}]\nmetadata: {redis: \"redis://u:hunter2-test@h:1/0\"}\n",
                                 "b.yaml", no_env);
  EXPECT_EQ(inline_pw.metadata.redis->password, "hunter2-test");
  EXPECT_EQ(config::render(inline_pw).find("hunter2-test"), std::string::npos);
  // Embedded by default.
  EXPECT_FALSE(config::parse("registries: [{names: [r]}]\n", "b.yaml", no_env).metadata.redis);
  std::filesystem::remove(pw);
}

TEST(Config, MetadataErrors) {
  const std::string head = "registries: [{names: [r]}]\nmetadata:\n";
  EXPECT_NE(error_of(head + "  redis: rediss://h:6379\n").find("berth.yaml:3:10: metadata.redis:"), std::string::npos);
  EXPECT_NE(error_of(head + "  redis: rediss://h:6379\n").find("TLS"), std::string::npos);
  EXPECT_NE(error_of(head + "  redis: redis://h:6379/x\n").find("database number"), std::string::npos);
  EXPECT_NE(error_of(head + "  password_file: /nonexistent/pw\n").find("metadata.password_file: needs metadata.redis"),
            std::string::npos);
  EXPECT_NE(error_of(head + "  redis: redis://h\n  password_file: /nonexistent/pw\n")
                .find("metadata.password_file: file /nonexistent/pw cannot be read"),
            std::string::npos);
  EXPECT_NE(error_of(head + "  tag_ttl: soon\n").find("berth.yaml:3:12: metadata.tag_ttl: must be a duration"),
            std::string::npos);
  EXPECT_NE(error_of(head + "  tag_ttl_overrides: [{pattern: v*}]\n")
                .find("metadata.tag_ttl_overrides[0]: needs both pattern and ttl"),
            std::string::npos);
  EXPECT_NE(error_of(head + "  tag_ttl_overrides: [{pattern: v*, ttl: 1m, when: x}]\n")
                .find("metadata.tag_ttl_overrides[0].when: unknown key"),
            std::string::npos);
  EXPECT_NE(error_of(head + "  memory_size: 10%\n").find("metadata.memory_size: must be a size"), std::string::npos);
  EXPECT_NE(
      error_of(head + "  webhook_secret_file: secret\n").find("metadata.webhook_secret_file: must be an absolute"),
      std::string::npos);
  EXPECT_NE(error_of(head + "  ttl: 1m\n").find("metadata.ttl: unknown key"), std::string::npos);
}

TEST(Size, Parses) {
  std::uint64_t b = 0;
  double f = 0;
  ASSERT_TRUE(config::parse_size("50GiB", b, f));
  EXPECT_EQ(b, 50ULL << 30);
  ASSERT_TRUE(config::parse_size("500MB", b, f));
  EXPECT_EQ(b, 500000000u);
  ASSERT_TRUE(config::parse_size("1048576", b, f));
  EXPECT_EQ(b, 1048576u);
  ASSERT_TRUE(config::parse_size("80%", b, f));
  EXPECT_DOUBLE_EQ(f, 0.8);
  EXPECT_EQ(b, 0u);
  for (const char* bad : {"", "GiB", "5 GiB", "5gib", "0", "101%", "0%", "-1GiB", "5PiB"}) {
    EXPECT_FALSE(config::parse_size(bad, b, f)) << bad;
  }
}

TEST(Config, IntegrityKnobs) {
  const std::string head = "registries: [{names: [r]}]\n";
  auto s = config::parse(head, "berth.yaml", no_env);
  EXPECT_EQ(s.server.watchdog_timeout, std::chrono::seconds(10));
  EXPECT_EQ(s.upstream.min_rate, 32u * 1024);
  EXPECT_EQ(s.upstream.min_rate_period, std::chrono::seconds(30));
  EXPECT_EQ(s.metadata.lock_wait, std::chrono::seconds(2));
  s = config::parse(
      head + "watchdog_timeout: 0s\nupstream: {min_rate: 0, min_rate_period: 5s}\nmetadata: {lock_wait: 300ms}\n",
      "berth.yaml", no_env);
  EXPECT_EQ(s.server.watchdog_timeout.count(), 0);
  EXPECT_EQ(s.upstream.min_rate, 0u);
  EXPECT_EQ(s.upstream.min_rate_period, std::chrono::seconds(5));
  EXPECT_EQ(s.metadata.lock_wait, std::chrono::milliseconds(300));
  s = config::parse(head + "upstream: {min_rate: 1MiB}\n", "berth.yaml", no_env);
  EXPECT_EQ(s.upstream.min_rate, 1u << 20);
  EXPECT_NE(error_of(head + "watchdog_timeout: 100ms\n")
                .find("berth.yaml:2:19: watchdog_timeout: must be 0s (off) or at least 500ms"),
            std::string::npos);
  EXPECT_NE(error_of(head + "upstream: {min_rate: fast}\n").find("upstream.min_rate: must be bytes per second"),
            std::string::npos);
  EXPECT_NE(error_of(head + "upstream: {min_rate: 10%}\n").find("upstream.min_rate: must be bytes per second"),
            std::string::npos);
  EXPECT_NE(error_of(head + "metadata: {lock_wait: soon}\n").find("metadata.lock_wait: must be a duration"),
            std::string::npos);
  const auto shown = config::render(config::parse(head, "berth.yaml", no_env));
  for (const char* key : {"watchdog_timeout: 10s", "min_rate: 32768", "min_rate_period: 30s"}) {
    EXPECT_NE(shown.find(key), std::string::npos) << key << " in\n" << shown;
  }
}

// Inputs the config fuzzer (tests/fuzz/config.cpp) found or aims at: each must be a
// config_error naming the file and position, never another exception.
TEST(Config, FuzzFindingsAreCleanErrors) {
  const std::string head = "registries: [{names: [r]}]\n";
  EXPECT_NE(error_of(head + "? [a, b]\n: c\n").find("berth.yaml:2:3: keys must be plain names"), std::string::npos)
      << error_of(head + "? [a, b]\n: c\n");
  EXPECT_NE(error_of(head + "upstream: {{x: 1}: 2}\n").find("upstream: keys must be plain names"), std::string::npos);
  EXPECT_NE(error_of(head + "shutdown_timeout: " + std::string(320, '9') + "h\n").find("at most 87600h"),
            std::string::npos);
  EXPECT_NE(error_of(head + "shutdown_timeout: 87601h\n").find("at most 87600h"), std::string::npos);
  EXPECT_EQ(error_of(head + "shutdown_timeout: 87600h\n"), "");
  EXPECT_NE(error_of(head + "cache: {dir: /x, max_size: 999999999999999TiB}\n").find("cache.max_size"),
            std::string::npos)
      << "a size that would wrap around 64 bits";
}

namespace {

// "key" at the start of a line (after indentation, a "- " or a "# "), as the example
// file writes keys, commented or not.
bool mentions_key(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto at = line.find_first_not_of(" -#");
    if (at != std::string::npos && line.compare(at, key.size() + 1, key + ":") == 0) return true;
  }
  return false;
}

std::string leaf(const std::string& dotted) {
  return dotted.substr(dotted.rfind('.') == std::string::npos ? 0 : dotted.rfind('.') + 1);
}

// The value the example file gives `key` in `section` (uncommented), or "".
std::string example_value(const std::string& text, const std::string& section, const std::string& key) {
  std::istringstream in(text);
  std::string line, current;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] != ' ' && line.find(':') != std::string::npos) current = line.substr(0, line.find(':'));
    const auto at = line.find_first_not_of(' ');
    const bool top = at == 0;
    if ((top ? std::string() : current) != section) continue;
    if (line.compare(at, key.size() + 1, key + ":") != 0) continue;
    auto v = line.substr(at + key.size() + 1);
    v = v.substr(0, v.find(" #"));
    v.erase(0, v.find_first_not_of(' '));
    v.erase(v.find_last_not_of(' ') + 1);
    return v;
  }
  return {};
}

// A throwaway self-signed certificate and key (dir/peer.crt, dir/peer.key), made with
// the openssl command line tool.
void write_peer_certificate(const std::string& dir) {
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "
      "/CN=berth-peer -addext subjectAltName=DNS:berth-peer -keyout " +
      dir + "/peer.key -out " + dir + "/peer.crt >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace

// One table drives parsing, the known-key lists and rendering: a key set in the file
// is shown by check-config, and every key Berth reads is documented in the example.
TEST(ConfigTable, EveryKeyReadIsShownAndDocumented) {
  const auto dir = std::filesystem::temp_directory_path() / ("berth-config-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  for (const char* f : {"pw", "secret", "webhook", "ca"}) {
    std::ofstream(dir / f) << "an-obviously-fake-secret-of-some-length\n";
  }
  const std::string d = dir.string();
  write_peer_certificate(d);
  const std::string full =
      "listen: 127.0.0.1:5051\nadmin_listen: 127.0.0.1:9096\nthreads: 3\nlog_level: warn\n"
      "access_log: false\nshutdown_timeout: 7s\nwatchdog_timeout: 2s\n"
      "registries: [{names: [r.example]}]\ndefault_registry: r.example\nhandover_socket: /run/b.sock\n"
      "clients: {idle_timeout: 61s, write_timeout: 62s, max_header_bytes: 2048, "
      "max_connections: 10, admin_max_connections: 11}\n"
      "upstream: {connect_timeout: 6s, response_timeout: 31s, read_timeout: 32s, idle_timeout: 51s,"
      " pool_wait_timeout: 11s, max_connections_per_host: 65, max_idle_per_host: 17,"
      " max_redirects: 6, min_rate: 1000, min_rate_period: 33s}\n"
      "cache: {dir: /var/lib/x, max_size: 1GiB, low_watermark: 0.7, fill_stall_timeout: 61s,"
      " authorization_ttl: 6m, zero_copy: false}\n"
      "metadata: {redis: 'redis://h:6379/1', password_file: " +
      d +
      "/pw, key_prefix: 'b:', tag_ttl: 61s, tag_ttl_overrides: [{pattern: 'v*', ttl: 9m}],"
      " max_stale: 23h, negative_ttl: 11s, manifest_ttl: 167h, lock_wait: 3s,"
      " memory_size: 65MiB, webhook_secret_file: " +
      d + "/webhook, secret_file: " + d + "/secret, timeout: 600ms}\n" +
      "peers: {listen: 127.0.0.2:5052, advertise: 127.0.0.3:5053, secret_file: " + d +
      "/secret, allow: [10.0.0.0/16, 'fd00::/64'], tls: {cert: " + d + "/peer.crt, key: " + d + "/peer.key, ca: " + d +
      "/peer.crt, server_name: peers.example}, stall_timeout: 4s, max_uploads: 9}\n";
  const auto shown = config::render(config::parse(full, "full.yaml", no_env));
  // What was set is what is shown: the rendering parses back to the same rendering.
  EXPECT_EQ(config::render(config::parse(shown, "shown.yaml", no_env)), shown);
  std::ifstream example_file(std::string(BERTH_SOURCE_DIR) + "/config/berth.example.yaml");
  const std::string example((std::istreambuf_iterator<char>(example_file)), std::istreambuf_iterator<char>());
  ASSERT_FALSE(example.empty());
  const auto keys = config::known_keys();
  EXPECT_GE(keys.size(), 40u);
  for (const auto& key : keys) {
    EXPECT_TRUE(mentions_key(shown, leaf(key))) << key << " is read but not shown:\n" << shown;
    EXPECT_TRUE(mentions_key(example, leaf(key))) << key << " is missing from config/berth.example.yaml";
  }
  // And the example's values are the defaults: it parses to what check-config shows
  // for a file with registries alone, apart from what the example sets on purpose.
  const auto defaults =
      config::render(config::parse("registries: [{names: [r.example]}]\ncache: {dir: /x}\n", "min.yaml", no_env));
  const std::set<std::string> on_purpose = {"registries", "default_registry", "cache.dir",
                                            "metadata.tag_ttl_overrides"};
  const auto example_shown = config::render(config::parse(example, "berth.example.yaml", no_env));
  for (const auto& key : keys) {
    if (on_purpose.contains(key)) continue;
    const auto dot = key.find('.');
    const std::string section = dot == std::string::npos ? "" : key.substr(0, dot);
    if (example_value(example, section, leaf(key)).empty()) continue;  // commented out: an option, no default
    // Both as check-config shows them, so "60s" and "1m" compare equal.
    EXPECT_EQ(example_value(example_shown, section, leaf(key)), example_value(defaults, section, leaf(key)))
        << key << ": the example shows another default";
  }
  std::filesystem::remove_all(dir);
}

TEST(Config, TheHandoverSocketMustBeAUsablePath) {
  const std::string regs = "registries: [{names: [r.example]}]\n";
  const std::string long_dir(100, 'd');
  EXPECT_NE(error_of(regs + "cache: {dir: /" + long_dir + "}\n").find("berth.yaml:2:14: cache.dir: is too long"),
            std::string::npos)
      << error_of(regs + "cache: {dir: /" + long_dir + "}\n");
  // With a socket of its own, the long cache directory is fine.
  EXPECT_EQ(error_of(regs + "cache: {dir: /" + long_dir + "}\nhandover_socket: /run/berth.sock\n"), "");
  EXPECT_NE(error_of(regs + "handover_socket: relative.sock\n").find("handover_socket: must be an absolute path"),
            std::string::npos);
  EXPECT_NE(error_of(regs + "handover_socket: /" + std::string(120, 's') + "\n").find("at most 107 bytes"),
            std::string::npos);
  EXPECT_EQ(config::parse(regs + "handover_socket: none\n", "berth.yaml", no_env).server.handover_socket, "none");
}

TEST(Config, PeersAllowAndTls) {
  const auto dir = std::filesystem::temp_directory_path() / ("berth-config-tls-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string d = dir.string();
  write_peer_certificate(d);
  // A second key that belongs to no certificate here.
  ASSERT_EQ(std::system(("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " + d +
                         "/other.key >/dev/null 2>&1")
                            .c_str()),
            0);
  std::ofstream(dir / "not.pem") << "not a certificate\n";
  const std::string head = "registries: [{names: [r]}]\npeers:\n";
  const auto tls = [&](const std::string& cert, const std::string& key, const std::string& ca) {
    return "  tls: {cert: " + d + "/" + cert + ", key: " + d + "/" + key + ", ca: " + d + "/" + ca + "}\n";
  };

  auto s = config::parse(
      head + "  allow: [10.0.0.0/16, 192.168.1.7, 'fd00::/64']\n" + tls("peer.crt", "peer.key", "peer.crt"),
      "berth.yaml", no_env);
  EXPECT_EQ(s.peers.allow, (std::vector<std::string>{"10.0.0.0/16", "192.168.1.7", "fd00::/64"}));
  EXPECT_TRUE(s.peers.tls.enabled());
  EXPECT_EQ(s.peers.tls.key, d + "/peer.key");
  EXPECT_EQ(s.peers.tls.server_name, "berth-peer");  // the default
  const auto shown = config::render(s);
  EXPECT_NE(shown.find("allow: [10.0.0.0/16, 192.168.1.7, fd00::/64]"), std::string::npos) << shown;
  EXPECT_NE(shown.find("server_name: berth-peer"), std::string::npos) << shown;

  // Bad input: a clear error naming the file, the line and the key.
  EXPECT_NE(error_of(head + "  allow: [10.0.0.0/16, 10.1.2.3/8]\n")
                .find("berth.yaml:3:24: peers.allow[1]: must be an IP address or a network"),
            std::string::npos)
      << error_of(head + "  allow: [10.0.0.0/16, 10.1.2.3/8]\n");
  EXPECT_NE(error_of(head + "  allow: {a: 1}\n").find("peers.allow: must be a list of strings"), std::string::npos);
  EXPECT_NE(error_of(head + "  tls: {cert: " + d + "/peer.crt, key: " + d + "/peer.key}\n").find("ca is required"),
            std::string::npos);
  EXPECT_NE(error_of(head + tls("peer.crt", "other.key", "peer.crt")).find("does not belong to cert"),
            std::string::npos)
      << error_of(head + tls("peer.crt", "other.key", "peer.crt"));
  EXPECT_NE(error_of(head + tls("not.pem", "peer.key", "peer.crt")).find("not a PEM certificate"), std::string::npos);
  EXPECT_NE(error_of(head + tls("peer.crt", "peer.key", "not.pem")).find("no PEM CA certificate"), std::string::npos)
      << error_of(head + tls("peer.crt", "peer.key", "not.pem"));
  EXPECT_NE(error_of(head + tls("peer.crt", "missing.key", "peer.crt")).find("peers.tls.key: file"), std::string::npos);
  EXPECT_NE(error_of(head + "  tls: {cert: a, key: b, ca: c, sni: x}\n").find("peers.tls.sni: unknown key"),
            std::string::npos);
  const auto good = tls("peer.crt", "peer.key", "peer.crt");
  EXPECT_NE(error_of(head + good.substr(0, good.size() - 2) + ", server_name: 'not a name'}\n")
                .find("peers.tls.server_name: must be a DNS name"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}
