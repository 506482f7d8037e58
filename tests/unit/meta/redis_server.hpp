#pragma once
// A real redis-server on a loopback port chosen at run time, for tests. Started by
// the constructor, killed by the destructor (also when a test fails).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace boost::asio {
class io_context;
}

namespace berth::testing {

inline int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

inline bool accepting(int port) {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(s);
  return ok;
}

// How many backend commands ended with `result` ("ok", "error", "timeout", "down"),
// read from the text of /metrics.
inline long backend_commands(const std::string& metrics_text, const std::string& result) {
  const std::string key = "berth_metadata_backend_commands_total{result=\"" + result + "\"} ";
  const auto at = metrics_text.find(key);
  return at == std::string::npos ? 0 : std::stol(metrics_text.substr(at + key.size()));
}

class redis_server {
 public:
  // `persist_dir`: an append-only file there (fsynced on every write), so that a
  // restart keeps the data, as a Dragonfly with snapshots would.
  explicit redis_server(int port, std::string password = {}, std::string persist_dir = {})
      : port_(port), password_(std::move(password)), persist_dir_(std::move(persist_dir)) {
    start();
  }
  ~redis_server() { stop(); }
  void start() {
    std::vector<std::string> args = {"redis-server", "--port", std::to_string(port_), "--bind", "127.0.0.1",
                                     "--save",       "",       "--appendonly",        "no",     "--loglevel",
                                     "warning"};
    if (!password_.empty()) args.insert(args.end(), {"--requirepass", password_});
    if (!persist_dir_.empty()) {
      args.insert(args.end(), {"--dir", persist_dir_, "--appendonly", "yes", "--appendfsync", "always"});
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ASSERT_EQ(posix_spawnp(&pid_, "redis-server", nullptr, nullptr, argv.data(), environ), 0) << "redis-server missing";
    for (int i = 0; i < 200 && !accepting(port_); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(accepting(port_));
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void pause() { ::kill(pid_, SIGSTOP); }
  void resume() { ::kill(pid_, SIGCONT); }

 private:
  int port_;
  std::string password_;
  std::string persist_dir_;
  pid_t pid_ = -1;
};

}  // namespace berth::testing
