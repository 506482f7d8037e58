#pragma once
// For the listener tests: a plain client socket, and the options of a listener with
// no access log, no bodies, no gate and no connection limit.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "http/server.hpp"

namespace berth::testing {

inline http::listener_options plain_listener(std::string name = "test") {
  return {.name = std::move(name),
          .access_log = false,
          .max_body_bytes = 0,
          .pull_only = false,
          .gate = nullptr,
          .max_connections = 0,
          .bind_wait = {}};
}

// Connected to 127.0.0.1:port, with a receive timeout so that no test waits forever.
// -1 if the connect failed.
inline int connect_to(unsigned short port, int timeout_s = 2) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{timeout_s, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace berth::testing
