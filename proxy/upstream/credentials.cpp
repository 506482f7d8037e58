#include "upstream/credentials.hpp"

#include <sys/stat.h>

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include "core/files.hpp"
#include "core/hasher.hpp"

namespace berth::upstream {
using core::read_file;
using core::trim_newlines;

std::string normalize_registry_host(std::string_view key) {
  if (auto p = key.find("://"); p != std::string_view::npos) key.remove_prefix(p + 3);
  if (auto p = key.find('/'); p != std::string_view::npos) key = key.substr(0, p);
  std::string out(key);
  for (auto& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::optional<credentials> parse_docker_config(std::string_view json, const std::vector<std::string>& names,
                                               std::string_view endpoint_host, std::string& error) {
  boost::system::error_code ec;
  auto doc = boost::json::parse(boost::json::string_view(json.data(), json.size()), ec);
  if (ec) {
    error = "not valid JSON (" + ec.message() + ")";
    return std::nullopt;
  }
  const auto* root = doc.if_object();
  const auto* auths_v = root ? root->if_contains("auths") : nullptr;
  const auto* auths = auths_v ? auths_v->if_object() : nullptr;
  if (auths == nullptr) {
    error = "no \"auths\" object";
    return std::nullopt;
  }
  const boost::json::object* entry = nullptr;
  std::string entry_key;
  auto find = [&](std::string_view host) {
    const auto want = normalize_registry_host(host);
    for (const auto& kv : *auths) {
      if (normalize_registry_host(std::string_view(kv.key().data(), kv.key().size())) == want &&
          kv.value().is_object()) {
        entry = &kv.value().get_object();
        entry_key = std::string(kv.key());
        return true;
      }
    }
    return false;
  };
  bool found = false;
  for (const auto& n : names) {
    if ((found = find(n))) break;
  }
  if (!found && !endpoint_host.empty()) found = find(endpoint_host);
  if (!found && auths->size() == 1 && auths->begin()->value().is_object()) {
    entry = &auths->begin()->value().get_object();
    entry_key = std::string(auths->begin()->key());
    found = true;
  }
  if (!found) {
    error = "no \"auths\" entry for this registry (and more than one entry to choose from)";
    return std::nullopt;
  }
  auto str = [&](const char* key) -> std::string {
    const auto* v = entry->if_contains(key);
    if (v && v->is_string()) return std::string(v->get_string());
    return {};
  };
  credentials c{str("username"), str("password")};
  if (c.username.empty() && c.password.empty()) {
    const auto auth = str("auth");
    std::string decoded;
    if (auth.empty() || !core::base64_decode(auth, decoded)) {
      error = "entry \"" + entry_key + "\" has neither username/password nor a valid base64 \"auth\"";
      return std::nullopt;
    }
    const auto colon = decoded.find(':');
    if (colon == std::string::npos) {
      error = "entry \"" + entry_key + "\" has an \"auth\" that is not base64 of user:password";
      return std::nullopt;
    }
    c.username = decoded.substr(0, colon);
    c.password = decoded.substr(colon + 1);
  }
  if (c.username.empty()) {
    error = "entry \"" + entry_key + "\" has an empty username";
    return std::nullopt;
  }
  return c;
}

credentials_provider::credentials_provider(credentials_source source, observer on_load)
    : source_(std::move(source)), on_load_(std::move(on_load)) {}

std::vector<credentials_provider::file_state> credentials_provider::stat_files() const {
  std::vector<file_state> out;
  for (const auto* path : {&source_.docker_config_file, &source_.username_file, &source_.password_file}) {
    file_state fs;
    struct stat st {};
    if (!path->empty() && ::stat(path->c_str(), &st) == 0) {  // stat follows the Secret's symlinks
      fs.exists = true;
      fs.dev = st.st_dev;
      fs.ino = st.st_ino;
      fs.size = static_cast<unsigned long long>(st.st_size);
      fs.mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
    }
    out.push_back(fs);
  }
  return out;
}

std::string credentials_provider::load_locked() {
  seen_ = stat_files();
  last_check_ = std::chrono::steady_clock::now();
  loaded_ = true;
  if (source_.empty()) {
    current_.reset();
    return {};
  }
  std::string error;
  std::optional<credentials> next;
  if (!source_.docker_config_file.empty()) {
    std::string text;
    if (!read_file(source_.docker_config_file, text)) {
      error = source_.docker_config_file + ": cannot be read";
    } else if (auto c = parse_docker_config(text, source_.names, source_.endpoint_host, error)) {
      next = std::move(c);
    } else {
      error = source_.docker_config_file + ": " + error;
    }
  } else {
    std::string user, pass;
    if (!read_file(source_.username_file, user)) {
      error = source_.username_file + ": cannot be read";
    } else if (!read_file(source_.password_file, pass)) {
      error = source_.password_file + ": cannot be read";
    } else if (trim_newlines(user).empty()) {
      error = source_.username_file + ": empty username";
    } else {
      next = credentials{trim_newlines(user), trim_newlines(pass)};
    }
  }
  if (on_load_) on_load_(next ? "ok" : "error");
  // A broken rewrite keeps the last good credentials: a half-written Secret must
  // not turn the node anonymous.
  if (next) current_ = std::move(next);
  return error;
}

std::string credentials_provider::load_now() {
  std::lock_guard lock(mu_);
  return load_locked();
}

std::optional<credentials> credentials_provider::get() {
  std::lock_guard lock(mu_);
  const auto now = std::chrono::steady_clock::now();
  if (!loaded_) {
    load_locked();
  } else if (now - last_check_ >= recheck_) {
    last_check_ = now;
    if (stat_files() != seen_) load_locked();
  }
  return current_;
}

}  // namespace berth::upstream
