#include "upstream/credentials.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "core/hasher.hpp"

using namespace berth::upstream;
namespace fs = std::filesystem;

namespace {

std::string auth_entry(const std::string& user, const std::string& pw) {
  return "{\"auth\":\"" + berth::core::base64_encode(user + ":" + pw) + "\"}";
}

class temp_dir {
 public:
  temp_dir() {
    char tmpl[] = "/tmp/berth-cred-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~temp_dir() { fs::remove_all(path_); }
  std::string file(const std::string& name, const std::string& content) const {
    auto p = path_ / name;
    std::ofstream(p) << content;
    return p.string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

}  // namespace

TEST(DockerConfig, PicksTheEntryForARegistryName) {
  const std::string json = R"({"auths":{"other.example":)" + auth_entry("x", "y") +
                           R"(,"https://registry.example.ts.net/v1/":)" + auth_entry("robot$cluster-pull", "s3cr:et") +
                           "}}";
  std::string err;
  auto c = parse_docker_config(json, {"registry.example.ts.net"}, "", err);
  ASSERT_TRUE(c) << err;
  EXPECT_EQ(c->username, "robot$cluster-pull");  // '$' survives unmangled
  EXPECT_EQ(c->password, "s3cr:et");             // ':' in a password is kept
}

TEST(DockerConfig, FallsBackToEndpointHostThenTheOnlyEntry) {
  std::string err;
  const std::string two =
      R"({"auths":{"harbor.svc:8443":{"username":"robot$proj+ci","password":"p1"},"x.example":{"username":"u","password":"p"}}})";
  auto c = parse_docker_config(two, {"registry.example.ts.net"}, "harbor.svc:8443", err);
  ASSERT_TRUE(c) << err;
  EXPECT_EQ(c->username, "robot$proj+ci");

  const std::string one = R"({"auths":{"somewhere":{"username":"u1","password":"p1"}}})";
  c = parse_docker_config(one, {"registry.example.ts.net"}, "harbor:443", err);
  ASSERT_TRUE(c) << err;
  EXPECT_EQ(c->username, "u1");

  EXPECT_FALSE(parse_docker_config(two, {"nope"}, "nope:1", err));
  EXPECT_NE(err.find("no \"auths\" entry"), std::string::npos);
}

TEST(DockerConfig, ErrorsNeverContainTheSecret) {
  std::string err;
  EXPECT_FALSE(parse_docker_config("{not json", {"r"}, "", err));
  EXPECT_NE(err.find("not valid JSON"), std::string::npos);
  EXPECT_FALSE(parse_docker_config(R"({"auths":{"r":{"auth":"bm9jb2xvbg=="}}})", {"r"}, "", err));  // "nocolon"
  EXPECT_EQ(err.find("nocolon"), std::string::npos);
  EXPECT_FALSE(parse_docker_config(R"({"auths":{"r":{"password":"topsecret"}}})", {"r"}, "", err));
  EXPECT_EQ(err.find("topsecret"), std::string::npos);
  EXPECT_FALSE(parse_docker_config(R"({"nothing":1})", {"r"}, "", err));
}

TEST(NormalizeHost, StripsSchemeAndPath) {
  EXPECT_EQ(normalize_registry_host("https://Registry.Example:5000/v1/"), "registry.example:5000");
  EXPECT_EQ(normalize_registry_host("registry.example"), "registry.example");
}

TEST(CredentialsProvider, ReadsUsernameAndPasswordFiles) {
  temp_dir d;
  credentials_source s;
  s.username_file = d.file("username", "robot$cluster-pull\n");
  s.password_file = d.file("password", "pw\n");
  credentials_provider p(s);
  EXPECT_EQ(p.load_now(), "");
  auto c = p.get();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->username, "robot$cluster-pull");
  EXPECT_EQ(c->password, "pw");
}

TEST(CredentialsProvider, FollowsAKubernetesStyleSymlinkSwap) {
  // Kubernetes mounts Secrets as ..data -> ..<timestamp>/ and swaps the ..data link.
  temp_dir d;
  fs::create_directory(d.path() / "v1");
  fs::create_directory(d.path() / "v2");
  std::ofstream(d.path() / "v1" / ".dockerconfigjson") << R"({"auths":{"r":)" + auth_entry("robot$a", "old") + "}}";
  std::ofstream(d.path() / "v2" / ".dockerconfigjson") << R"({"auths":{"r":)" + auth_entry("robot$a", "new") + "}}";
  fs::create_directory_symlink("v1", d.path() / "..data");
  fs::create_symlink("..data/.dockerconfigjson", d.path() / ".dockerconfigjson");

  credentials_source s;
  s.docker_config_file = (d.path() / ".dockerconfigjson").string();
  s.names = {"r"};
  int loads = 0;
  credentials_provider p(s, [&](std::string_view) { ++loads; });
  ASSERT_EQ(p.get()->password, "old");

  fs::create_directory_symlink("v2", d.path() / "..data_tmp");
  fs::rename(d.path() / "..data_tmp", d.path() / "..data");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // the provider re-stats at most once a second
  EXPECT_EQ(p.get()->password, "new");
  EXPECT_EQ(loads, 2);
}

TEST(CredentialsProvider, KeepsTheLastGoodCredentialsWhenTheFileBreaks) {
  temp_dir d;
  credentials_source s;
  s.docker_config_file = d.file("cfg", R"({"auths":{"r":)" + auth_entry("u", "good") + "}}");
  s.names = {"r"};
  credentials_provider p(s);
  ASSERT_EQ(p.get()->password, "good");
  d.file("cfg", "{ half written");
  EXPECT_NE(p.load_now(), "");
  ASSERT_TRUE(p.get());
  EXPECT_EQ(p.get()->password, "good");
}

TEST(CredentialsProvider, MissingFileMeansAnonymousAndSaysWhy) {
  credentials_source s;
  s.docker_config_file = "/nonexistent/berth/.dockerconfigjson";
  credentials_provider p(s);
  EXPECT_NE(p.load_now().find("cannot be read"), std::string::npos);
  EXPECT_FALSE(p.get());
}
