#include "containerd/hosts_toml.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

using namespace berth::containerd;
namespace fs = std::filesystem;

namespace {
const hosts_options k_opts{"registry.example.ts.net", "http://127.0.0.1:5050", "", "1s", "", ""};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
}  // namespace

TEST(HostsToml, NewFileHasServerThenBerth) {
  const auto out = render(k_opts, std::nullopt);
  EXPECT_EQ(out.rfind(k_created_marker, 0), 0u);
  const auto server = out.find("server = \"https://registry.example.ts.net\"");
  const auto host = out.find("[host.\"http://127.0.0.1:5050\"]");
  ASSERT_NE(server, std::string::npos);
  ASSERT_NE(host, std::string::npos);
  EXPECT_LT(server, host);
  EXPECT_NE(out.find("capabilities = [\"pull\", \"resolve\"]"), std::string::npos);
  EXPECT_NE(out.find("dial_timeout = \"1s\""), std::string::npos);
}

TEST(HostsToml, BerthGoesBeforeExistingHostsAndKeepsEverythingElse) {
  const std::string existing =
      "server = \"https://registry.example.ts.net\"\n# a comment\nca = \"/etc/ca.pem\"\n\n"
      "[host.\"https://other:5000\"]\n  capabilities = [\"pull\"]\n  [host.\"https://other:5000\".header]\n  x = "
      "\"y\"\n";
  const auto out = render(k_opts, existing);
  const auto berth = out.find("[host.\"http://127.0.0.1:5050\"]");
  const auto other = out.find("[host.\"https://other:5000\"]");
  ASSERT_NE(berth, std::string::npos);
  ASSERT_NE(other, std::string::npos);
  EXPECT_LT(berth, other);
  EXPECT_LT(out.find("ca = \"/etc/ca.pem\""), berth);  // top-level keys stay before any table
  EXPECT_NE(out.find("# a comment"), std::string::npos);
  EXPECT_NE(out.find("x = \"y\""), std::string::npos);
  // Stripping Berth's block gives the original back.
  EXPECT_EQ(strip(out, k_opts.mirror).find("127.0.0.1:5050"), std::string::npos);
}

TEST(HostsToml, RenderIsIdempotentAndReplacesAStaleEntryForTheSameMirror) {
  const std::string existing =
      "server = \"https://r\"\n[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\"]\n  skip_verify = true\n";
  const auto once = render(k_opts, existing);
  EXPECT_EQ(render(k_opts, once), once);
  EXPECT_EQ(once.find("skip_verify"), std::string::npos);
  std::size_t count = 0;
  for (auto p = once.find("[host.\"http://127.0.0.1:5050\"]"); p != std::string::npos;
       p = once.find("[host.\"http://127.0.0.1:5050\"]", p + 1))
    ++count;
  EXPECT_EQ(count, 1u);
}

TEST(HostsToml, RejectsInjection) {
  EXPECT_THROW(render({"../etc", "http://127.0.0.1:5050", "", "", "", ""}, std::nullopt), std::invalid_argument);
  EXPECT_THROW(render({"r", "http://x\"]\n[evil", "", "", "", ""}, std::nullopt), std::invalid_argument);
  EXPECT_THROW(render({"r", "ftp://x", "", "", "", ""}, std::nullopt), std::invalid_argument);
}

TEST(HostsToml, InstallBacksUpOnceAndUninstallRestoresByteForByte) {
  const fs::path dir = fs::temp_directory_path() / ("berth-hosts-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "registry.example.ts.net");
  const std::string original = "server = \"https://registry.example.ts.net\"\r\n# CRLF and no final newline";
  std::ofstream(dir / "registry.example.ts.net" / "hosts.toml", std::ios::binary) << original;

  EXPECT_EQ(install(dir.string(), k_opts).action, "updated");
  EXPECT_EQ(install(dir.string(), k_opts).action, "unchanged");
  auto o2 = k_opts;
  o2.dial_timeout = "2s";
  EXPECT_EQ(install(dir.string(), o2).action, "updated");  // re-install never overwrites the backup
  EXPECT_EQ(slurp(dir / "registry.example.ts.net" / "hosts.toml.berth-orig"), original);
  EXPECT_EQ(uninstall(dir.string(), k_opts.registry, k_opts.mirror).action, "restored");
  EXPECT_EQ(slurp(dir / "registry.example.ts.net" / "hosts.toml"), original);
  EXPECT_FALSE(fs::exists(dir / "registry.example.ts.net" / "hosts.toml.berth-orig"));

  // A file Berth created is removed, with its directory.
  EXPECT_EQ(install(dir.string(), {"new.example", "http://127.0.0.1:5050", "", "", "", ""}).action, "created");
  EXPECT_EQ(uninstall(dir.string(), "new.example", "http://127.0.0.1:5050").action, "removed");
  EXPECT_FALSE(fs::exists(dir / "new.example"));
  EXPECT_EQ(uninstall(dir.string(), "new.example", "http://127.0.0.1:5050").action, "nothing to do");
  fs::remove_all(dir);
}

TEST(HostsToml, ANewFileCarriesTheFallbacksCaBesideIt) {
  const auto dir = fs::temp_directory_path() / ("berth-hosts-ca-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto ca = dir / "harbor-ca.pem";
  std::ofstream(ca) << "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n";
  hosts_options o = k_opts;
  o.server = "https://harbor.internal:8443";
  o.ca = ca.string();
  const auto certs = dir / "certs.d";
  ASSERT_EQ(install(certs.string(), o).action, "created");
  const auto text = slurp(certs / o.registry / "hosts.toml");
  // Relative: containerd resolves it against the hosts.toml directory, on the host.
  const auto server = text.find("server = \"https://harbor.internal:8443\"\nca = \"berth-ca.crt\"\n");
  ASSERT_NE(server, std::string::npos) << text;
  EXPECT_LT(server, text.find("[host.")) << "top-level keys come before every table";
  EXPECT_EQ(slurp(certs / o.registry / "berth-ca.crt"), slurp(ca));
  EXPECT_EQ(uninstall(certs.string(), o.registry, o.mirror).action, "removed");
  EXPECT_FALSE(fs::exists(certs / o.registry)) << "the CA copy goes with the file";
  o.ca = (dir / "missing.pem").string();
  EXPECT_THROW(install(certs.string(), o), std::runtime_error);
  fs::remove_all(dir);
}

TEST(HostsToml, DockerHubFallsBackToContainerdsDocumentedServer) {
  hosts_options o = k_opts;
  o.registry = "docker.io";
  EXPECT_NE(render(o, std::nullopt).find("server = \"https://registry-1.docker.io\""), std::string::npos);
}

TEST(HostsToml, FallbackCredentialsAreTheServersHeaderInAFileOnlyRootReads) {
  const auto dir = fs::temp_directory_path() / ("berth-hosts-creds-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  hosts_options o = k_opts;
  o.fallback_authorization = "Basic cm9ib3QkY2x1c3Rlci1wdWxsOmZha2U=";
  ASSERT_EQ(install(dir.string(), o).action, "created");
  const auto path = dir / o.registry / "hosts.toml";
  const auto text = slurp(path);
  // A top-level [header] table is the server's: it follows the host table, and no
  // host table comes after it (it would end the [header] table's keys).
  const auto header = text.find("[header]\n  Authorization = \"Basic cm9ib3QkY2x1c3Rlci1wdWxsOmZha2U=\"\n");
  ASSERT_NE(header, std::string::npos) << text;
  EXPECT_LT(text.find("[host."), header);
  EXPECT_EQ(text.find("[host.", header), std::string::npos) << text;
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  // Never readable by others, not even while written: a temp file planted (or left by
  // a crash) where it is written is replaced, not written through.
  o.fallback_authorization = "Basic eQ==";
  fs::create_symlink("/nonexistent-target", path.string() + ".berth-tmp");
  ASSERT_EQ(install(dir.string(), o).action, "updated");
  EXPECT_FALSE(fs::exists(fs::symlink_status(path.string() + ".berth-tmp")));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  // Installing again without them takes them out, and the file is readable again.
  o.fallback_authorization.clear();
  ASSERT_EQ(install(dir.string(), o).action, "updated");
  EXPECT_EQ(slurp(path).find("Authorization"), std::string::npos);
  EXPECT_NE(fs::status(path).permissions() & fs::perms::others_read, fs::perms::none);
  // Uninstall removes the whole file Berth created, credentials included.
  o.fallback_authorization = "Basic eA==";
  ASSERT_EQ(install(dir.string(), o).action, "updated");
  EXPECT_EQ(uninstall(dir.string(), o.registry, o.mirror).action, "removed");
  fs::remove_all(dir);
}

TEST(HostsToml, FallbackCredentialsNeverBreakTheFile) {
  hosts_options o = k_opts;
  o.fallback_authorization = "Basic x\"\n[evil]";
  EXPECT_THROW(render(o, std::nullopt), std::invalid_argument);
  // The node's own [header] for the server: a second table would be a TOML error,
  // and containerd ignores a file it cannot parse.
  o.fallback_authorization = "Basic eA==";
  for (const std::string own : {"server = \"https://r\"\n\n[header]\n  X-Team = \"a\"\n",
                                "server = \"https://r\"\n\n[ header ]\n  X-Team = \"a\"\n",
                                "server = \"https://r\"\n\n[\"header\"]\n  X-Team = \"a\"\n",
                                "server = \"https://r\"\nheader = { X-Team = \"a\" }\n",
                                "server = \"https://r\"\n\"header\".X-Team = \"a\"\n"}) {
    EXPECT_THROW(render(o, own), std::invalid_argument) << own;
  }
  // A host's own header table is no conflict.
  const std::string host_header =
      "server = \"https://r\"\n\n[host.\"https://other\"]\n[host.\"https://other\".header]\n  X = \"1\"\n";
  const auto text = render(o, host_header);
  EXPECT_NE(text.find("[host.\"https://other\".header]"), std::string::npos);
  EXPECT_GT(text.find("[header]"), text.find("[host.\"https://other\".header]"));
}
