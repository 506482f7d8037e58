#pragma once
// What a handler gives back to the HTTP session: a status, headers, and either a
// small buffered body, a streamed body, or an OCI error that http/ renders.
#include <memory>
#include <optional>
#include <string>

#include "core/body_source.hpp"
#include "core/failure.hpp"
#include "core/headers.hpp"
#include "core/oci_error.hpp"

namespace berth::core {

struct reply {
  unsigned status = 200;
  core::headers headers;
  std::string body;                     // used when `stream` is null
  std::unique_ptr<body_source> stream;  // streamed body (GET of a blob)
  std::optional<oci_error> error;       // rendered as the OCI JSON error body
  // For HEAD: the Content-Length to announce (the GET body's length).
  std::optional<std::uint64_t> head_length;

  // For the access log and metrics.
  unsigned upstream_status = 0;
  std::string registry;
};

// A copy of a buffered reply (its stream, if any, is not copied): one answer
// handed to several clients.
inline reply copy_of(const reply& r) {
  reply c;
  c.status = r.status;
  c.headers = r.headers;
  c.body = r.body;
  c.error = r.error;
  c.head_length = r.head_length;
  c.upstream_status = r.upstream_status;
  c.registry = r.registry;
  return c;
}

inline reply error_reply(oci_error e) {
  reply r;
  r.status = e.status;
  r.error = std::move(e);
  return r;
}
inline reply error_reply(failure f, std::string message) {
  return error_reply(error(f, std::move(message)));
}

}  // namespace berth::core
