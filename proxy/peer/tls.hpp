#pragma once
// Mutual TLS between nodes (peers.tls). Every node holds the cluster's peer
// certificate (one Secret, cert-manager's kubernetes.io/tls: tls.crt, tls.key, ca.crt)
// and both ends of a peer connection check the other's:
//  - the server (the peer endpoint) requires a client certificate that chains to
//    `ca` and refuses the handshake without one;
//  - the client (a node fetching a blob) requires the server's certificate to chain to
//    `ca` and to name `server_name` (nodes are reached by IP; the certificate names the
//    cluster's peers, not each node).
// TLS 1.2 at least. The request signature still applies inside the tunnel.
#include <memory>
#include <string>

using SSL_CTX = struct ssl_ctx_st;

namespace berth::peer {

struct tls_files {
  std::string cert;                        // PEM certificate (chain), this node's
  std::string key;                         // PEM private key of `cert`
  std::string ca;                          // PEM CA certificates a peer's certificate must chain to
  std::string server_name = "berth-peer";  // the name a server's certificate must carry
  bool enabled() const { return !cert.empty(); }
};

// What is wrong with the files ("" when nothing): unreadable, not PEM, a key that does
// not match the certificate, no CA certificate.
std::string check_tls(const tls_files& files);

// The two OpenSSL contexts; freed with the last reference. Throws std::runtime_error
// with check_tls's reason.
struct tls_contexts {
  std::shared_ptr<SSL_CTX> server;
  std::shared_ptr<SSL_CTX> client;
};
tls_contexts make_tls(const tls_files& files);

}  // namespace berth::peer
