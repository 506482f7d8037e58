#include "peer/allow_list.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/network_v4.hpp>
#include <boost/asio/ip/network_v6.hpp>
#include <optional>
#include <variant>

namespace berth::peer {

namespace ip = boost::asio::ip;

namespace {

using network = std::variant<ip::network_v4, ip::network_v6>;

std::optional<network> parse(const std::string& s) {
  boost::system::error_code ec;
  const auto slash = s.find('/');
  if (slash == std::string::npos) {
    const auto a = ip::make_address(s, ec);
    if (ec) return std::nullopt;
    if (a.is_v4()) return network{ip::network_v4(a.to_v4(), 32)};
    return network{ip::network_v6(a.to_v6(), 128)};
  }
  if (s.find(':') == std::string::npos) {
    const auto n = ip::make_network_v4(s, ec);
    if (ec || n != n.canonical()) return std::nullopt;
    return network{n};
  }
  const auto n = ip::make_network_v6(s, ec);
  if (ec || n != n.canonical()) return std::nullopt;
  return network{n};
}

bool contains(const network& n, const ip::address& a) {
  if (const auto* v4 = std::get_if<ip::network_v4>(&n)) {
    if (!a.is_v4()) return false;
    return ip::network_v4(a.to_v4(), v4->prefix_length()).canonical() == *v4;
  }
  const auto& v6 = std::get<ip::network_v6>(n);
  if (!a.is_v6()) return false;
  return ip::network_v6(a.to_v6(), v6.prefix_length()).canonical() == v6;
}

}  // namespace

bool valid_network(const std::string& s) {
  return parse(s).has_value();
}

address_filter allow_from(const std::vector<std::string>& networks) {
  std::vector<network> nets;
  for (const auto& s : networks) {
    if (auto n = parse(s)) nets.push_back(*n);
  }
  return [nets = std::move(nets)](const ip::address& from) {
    ip::address a = from;
    if (a.is_v6() && a.to_v6().is_v4_mapped()) a = ip::make_address_v4(ip::v4_mapped, a.to_v6());
    for (const auto& n : nets) {
      if (contains(n, a)) return true;
    }
    return false;
  };
}

}  // namespace berth::peer
