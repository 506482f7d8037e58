#pragma once
// Small whole-file reads: credentials, passwords, shared secrets.
#include <string>

namespace berth::core {

// The whole file; false if it cannot be opened.
bool read_file(const std::string& path, std::string& out);

// `s` without trailing newlines (secret files usually end with one).
std::string trim_newlines(std::string s);

}  // namespace berth::core
