#pragma once
// containerd's registry host configuration (certs.d/<registry>/hosts.toml), as
// `berth containerd install|uninstall|print` manages it. Berth's host entry goes
// first (containerd tries hosts in file order, then `server`), inside a marked
// block; everything else in an existing file is kept as written. The original
// file is backed up once and restored byte for byte on uninstall.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace berth::containerd {

struct hosts_options {
  std::string registry;      // the registry host containerd resolves, e.g. registry.example.ts.net
  std::string mirror;        // Berth's URL, e.g. http://127.0.0.1:5050
  std::string server;        // fallback when the file is new; default https://<registry>
                             // (https://registry-1.docker.io for docker.io, as containerd documents)
  std::string dial_timeout;  // containerd 2.1+: how fast to give up on a dead Berth; empty = omit
  std::string ca;            // CA file for `server` when the file is new (Harbor's private CA); empty = omit.
                             // install copies it beside hosts.toml as k_ca_file: containerd resolves a
                             // relative `ca` against that directory, so the path holds on the host even
                             // when install runs in a container that sees the host's files elsewhere.
  // An Authorization value ("Basic <base64 user:password>") containerd sends to
  // `server` itself, from the file's top-level [header] table: the fallback then pulls
  // private images as the robot while Berth is down. Empty: none. A file holding it is
  // written 0600.
  std::string fallback_authorization;
};

inline constexpr std::string_view k_block_begin = "# >>> berth mirror (managed by berth containerd install)";
inline constexpr std::string_view k_block_end = "# <<< berth mirror";
inline constexpr std::string_view k_ca_file = "berth-ca.crt";
inline constexpr std::string_view k_created_marker =
    "# Created by berth containerd install; berth containerd uninstall removes this file.";

// The hosts.toml text with Berth's entry, given the current file (nullopt: none).
// Pure; throws std::invalid_argument on a bad registry, mirror or authorization, and
// when fallback credentials would meet a [header] table the file has already.
std::string render(const hosts_options& o, const std::optional<std::string>& existing);

// `existing` without Berth's block and without any other table for the same mirror URL.
std::string strip(std::string_view existing, std::string_view mirror);

std::string hosts_dir(const std::string& certs_dir, const std::string& registry);
std::string hosts_file(const std::string& certs_dir, const std::string& registry);
std::string backup_file(const std::string& certs_dir, const std::string& registry);

// What install/uninstall did, for the command's output.
struct outcome {
  std::string path;
  std::string action;  // "created", "updated", "unchanged", "restored", "removed", "nothing to do"
};

// Writes the file (atomically, via a temp file and rename). The first install over
// an existing file that Berth did not write saves it as hosts.toml.berth-orig.
outcome install(const std::string& certs_dir, const hosts_options& o);

// Restores the backup, or removes a file Berth created, or strips Berth's block.
outcome uninstall(const std::string& certs_dir, const std::string& registry, const std::string& mirror);

}  // namespace berth::containerd
