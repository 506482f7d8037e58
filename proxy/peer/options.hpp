#pragma once
// Options for sharing blobs between nodes, filled by config/ (the `peers:` section).
#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "peer/tls.hpp"

namespace berth::peer {

struct peer_options {
  // "IP:port" where this node's peer endpoint listens and where other nodes reach it
  // (the node's IP from the downward API, status.hostIP). Empty: blob sharing is off.
  std::string listen;
  // Where other nodes reach this one, when not at `listen` (a port mapped in front
  // of it). Empty: `listen`.
  std::string advertise;
  // The cluster secret every node signs its peer requests with (read from
  // secret_file at start-up).
  std::string secret_file;
  std::string secret;
  // Addresses or networks (CIDR) other nodes connect from: a connection from anywhere
  // else is closed before a byte is read. Empty: any address (the signature decides).
  std::vector<std::string> allow;
  // Mutual TLS between nodes (peers.tls); off unless set. See peer/tls.hpp.
  tls_files tls;
  // A peer that sends nothing for this long is dropped and the fill continues
  // elsewhere (well under containerd's patience).
  std::chrono::milliseconds stall_timeout{5000};
  // Blob bodies this node sends to other nodes at once; past it an asker is told
  // "busy" (503) and picks another holder.
  std::size_t max_uploads = 16;
  bool enabled() const { return !listen.empty(); }
  const std::string& address() const { return advertise.empty() ? listen : advertise; }
};

}  // namespace berth::peer
