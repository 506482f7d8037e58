#include "peer/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <stdexcept>

namespace berth::peer {

namespace {

std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

using ctx_ptr = std::shared_ptr<SSL_CTX>;

// A context with this node's certificate and key, trusting only `ca`, TLS 1.2+.
// Throws with what is wrong, naming the file.
ctx_ptr make_context(const tls_files& f, bool server) {
  ERR_clear_error();
  ctx_ptr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()), SSL_CTX_free);
  if (!ctx) throw std::runtime_error("cannot make a TLS context: " + openssl_error());
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  // An encrypted key fails to load instead of prompting on a terminal.
  SSL_CTX_set_default_passwd_cb(ctx.get(), [](char*, int, int, void*) { return 0; });
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), f.cert.c_str()) != 1)
    throw std::runtime_error("cert " + f.cert + ": not a PEM certificate (" + openssl_error() + ")");
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), f.key.c_str(), SSL_FILETYPE_PEM) != 1) {
    if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
      throw std::runtime_error("key " + f.key + " does not belong to cert " + f.cert);
    throw std::runtime_error("key " + f.key + ": not a PEM private key (" + openssl_error() + ")");
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    throw std::runtime_error("key " + f.key + " does not belong to cert " + f.cert);
  if (SSL_CTX_load_verify_locations(ctx.get(), f.ca.c_str(), nullptr) != 1)
    throw std::runtime_error("ca " + f.ca + ": no PEM CA certificate (" + openssl_error() + ")");
  // Only `ca`: never the system's trust store.
  SSL_CTX_set_verify(ctx.get(), server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, nullptr);
  if (server) {
    // The CA names a client may pick its certificate by.
    if (auto* names = SSL_load_client_CA_file(f.ca.c_str())) SSL_CTX_set_client_CA_list(ctx.get(), names);
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  }
  ERR_clear_error();
  return ctx;
}

}  // namespace

std::string check_tls(const tls_files& files) {
  try {
    make_context(files, true);
    make_context(files, false);
  } catch (const std::exception& e) {
    return e.what();
  }
  return {};
}

tls_contexts make_tls(const tls_files& files) {
  return {make_context(files, true), make_context(files, false)};
}

}  // namespace berth::peer
