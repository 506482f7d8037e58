#include "http/handover.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "core/log.hpp"
#include "metrics/metrics.hpp"

namespace berth::http {

namespace {

constexpr std::size_t k_max_fds = 8;
constexpr std::string_view k_hello = "berth-handover 1\n";
// How long either side waits for the other's next message before giving up on it.
constexpr int k_step_ms = 5000;

sockaddr_un address_of(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) throw std::runtime_error("hand-over socket path too long: " + path);
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// Waits for `fd` to be readable. False on timeout.
bool readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  int r = 0;
  do {
    r = ::poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

// One message, or "" on EOF, error or timeout.
std::string receive(int fd, int ms) {
  if (!readable(fd, ms)) return {};
  char buf[256];
  const auto n = ::recv(fd, buf, sizeof buf, 0);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

bool send_text(int fd, std::string_view text) {
  return ::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
}

bool is_listening_socket(int fd) {
  int on = 0;
  socklen_t len = sizeof on;
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on != 0;
}

}  // namespace

// ---- successor ----

inherited_listeners::inherited_listeners(std::map<std::string, int> fds, std::map<std::string, std::string> addresses,
                                         int channel)
    : fds_(std::move(fds)), addresses_(std::move(addresses)), channel_(channel), received_(true) {}

inherited_listeners::~inherited_listeners() {
  close_all();
}

inherited_listeners::inherited_listeners(inherited_listeners&& other) noexcept {
  *this = std::move(other);
}

inherited_listeners& inherited_listeners::operator=(inherited_listeners&& other) noexcept {
  if (this != &other) {
    close_all();
    fds_ = std::move(other.fds_);
    addresses_ = std::move(other.addresses_);
    channel_ = other.channel_;
    received_ = other.received_;
    other.fds_.clear();
    other.channel_ = -1;
  }
  return *this;
}

void inherited_listeners::close_all() {
  close_untaken();
  if (channel_ >= 0) ::close(channel_);
  channel_ = -1;
}

bool inherited_listeners::offers(const std::string& name, const std::string& address) const {
  const auto it = addresses_.find(name);
  // Port 0 asks for a new port: nothing to inherit. A changed address binds afresh.
  return fds_.contains(name) && it != addresses_.end() && it->second == address && !address.ends_with(":0");
}

int inherited_listeners::take(const std::string& name, const std::string& address) {
  const auto it = fds_.find(name);
  if (it == fds_.end()) return -1;
  if (!offers(name, address)) {
    log::warn("handover_listener_not_taken", {{"listener", name},
                                              {"offered", addresses_[name]},
                                              {"configured", address},
                                              {"detail", "binding the configured address instead"}});
    return -1;
  }
  const int fd = it->second;
  fds_.erase(it);
  return fd;
}

void inherited_listeners::close_untaken() {
  for (auto& [name, fd] : fds_) ::close(fd);
  fds_.clear();
}

void inherited_listeners::confirm() {
  if (channel_ >= 0 && !send_text(channel_, "accepting\n")) {
    log::warn("handover_confirm_failed", {{"error", std::strerror(errno)}});
  }
}

bool inherited_listeners::wait_released(std::chrono::milliseconds limit) {
  if (channel_ < 0) return true;
  if (!readable(channel_, static_cast<int>(limit.count()))) return false;
  // "released", or the end of the connection: the runner is gone, and with it its lock.
  char buf[64];
  (void)::recv(channel_, buf, sizeof buf, MSG_DONTWAIT);
  ::close(channel_);
  channel_ = -1;
  return true;
}

inherited_listeners take_over(const std::string& path) {
  const auto addr = address_of(path);
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) throw std::runtime_error(std::string("hand-over socket: ") + std::strerror(errno));
  if (::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(s);  // nobody there (no file, or a stale one): bind as usual
    return {};
  }
  if (!readable(s, k_step_ms)) {
    ::close(s);
    log::warn("handover_no_answer", {{"socket", path}, {"detail", "binding the configured addresses instead"}});
    return {};
  }
  char text[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * k_max_fds)];
  iovec iov{text, sizeof text};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const auto n = ::recvmsg(s, &msg, MSG_CMSG_CLOEXEC);
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const auto count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
  }
  const std::string body = n > 0 ? std::string(text, static_cast<std::size_t>(n)) : std::string();
  // Refused (the runner is stopping) or not a Berth: bind as usual.
  if (!body.starts_with(k_hello) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
    for (int fd : fds) ::close(fd);
    ::close(s);
    return {};
  }
  std::map<std::string, int> by_name;
  std::map<std::string, std::string> addresses;
  std::istringstream lines(body.substr(k_hello.size()));
  std::string name, address;
  std::size_t i = 0;
  while (lines >> name >> address) {
    if (i < fds.size() && is_listening_socket(fds[i])) {
      by_name[name] = fds[i];
      addresses[name] = address;
    } else if (i < fds.size()) {
      ::close(fds[i]);
    }
    ++i;
  }
  for (; i < fds.size(); ++i) ::close(fds[i]);
  log::info("handover_received", {{"socket", path}, {"listeners", static_cast<unsigned>(by_name.size())}});
  return {std::move(by_name), std::move(addresses), s};
}

// ---- runner ----

handover_server::handover_server(std::string path, std::function<std::map<std::string, listener>()> listeners,
                                 std::function<void(int)> handed_over, metrics::registry& metrics)
    : path_(std::move(path)),
      listeners_(std::move(listeners)),
      handed_over_(std::move(handed_over)),
      metrics_(metrics) {
  const auto addr = address_of(path_);
  sock_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (sock_ < 0) throw std::runtime_error(std::string("hand-over socket: ") + std::strerror(errno));
  // Whatever is at the path is a predecessor's, which has handed over (or died).
  ::unlink(path_.c_str());
  if (::bind(sock_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(sock_, 4) != 0) {
    const std::string err = std::strerror(errno);
    ::close(sock_);
    throw std::runtime_error("cannot listen on hand-over socket " + path_ + ": " + err);
  }
  // Only root (the DaemonSet's user) may take the node's listeners.
  ::chmod(path_.c_str(), 0600);
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) inode_ = st.st_ino;
  if (::pipe2(wake_, O_CLOEXEC) != 0) {
    ::close(sock_);
    throw std::runtime_error(std::string("hand-over pipe: ") + std::strerror(errno));
  }
  thread_ = std::thread([this] { run(); });
}

handover_server::~handover_server() {
  (void)::write(wake_[1], "x", 1);
  thread_.join();
  ::close(sock_);
  ::close(wake_[0]);
  ::close(wake_[1]);
  // The path is ours to remove unless a successor has put its own socket there.
  struct stat st {};
  if (!handed_ && ::stat(path_.c_str(), &st) == 0 && st.st_ino == inode_) ::unlink(path_.c_str());
}

void handover_server::run() {
  while (true) {
    pollfd p[2] = {{sock_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents != 0) return;  // being destroyed
    const int conn = ::accept4(sock_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    if (serve_one(conn)) {
      handed_ = true;
      return;  // one hand-over per process: it no longer has listeners to give
    }
    ::close(conn);
  }
}

bool handover_server::serve_one(int conn) {
  const auto listeners = listeners_();
  if (listeners.empty()) {  // stopping: nothing to give, the successor binds afresh
    send_text(conn, "refused\n");
    metrics_.handover("refused");
    return false;
  }
  std::string text(k_hello);
  std::vector<int> fds;
  for (const auto& [name, l] : listeners) {
    text += name + " " + l.address + "\n";
    fds.push_back(l.fd);
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * k_max_fds)] = {};
  iovec iov{text.data(), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  const bool sent = ::sendmsg(conn, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(text.size());
  for (const auto& [name, l] : listeners) ::close(l.fd);
  if (!sent) return false;
  // Until the successor accepts, this process goes on serving as before.
  if (!receive(conn, k_step_ms).starts_with("accepting")) {
    log::warn("handover_abandoned", {{"socket", path_}, {"detail", "the successor did not take the listeners"}});
    metrics_.handover("abandoned");
    return false;
  }
  log::info("handed_over", {{"socket", path_}, {"listeners", static_cast<unsigned>(listeners.size())}});
  handed_over_(conn);
  return true;
}

void send_released(int channel) {
  if (channel < 0) return;
  send_text(channel, "released\n");
  ::close(channel);
}

}  // namespace berth::http
