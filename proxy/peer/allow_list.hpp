#pragma once
// Which addresses may connect to the peer endpoint (peers.allow): networks in CIDR
// notation ("10.0.0.0/16", "fd00:1::/64") or single addresses. Kubernetes
// NetworkPolicy does not govern a hostNetwork pod's ports, so this is how a node keeps
// the pod network (and anything else outside the nodes' own network) off its peer
// port: such a connection is closed before a byte of it is read.
#include <functional>
#include <string>
#include <vector>

namespace boost::asio::ip {
class address;
}

namespace berth::peer {

// True when `s` is an IPv4 or IPv6 address, or a network in CIDR notation whose
// address has no bits set past its prefix ("10.0.0.0/8", not "10.1.2.3/8").
bool valid_network(const std::string& s);

// True for an address inside one of `networks` (an IPv4 address mapped into IPv6, as
// a dual-stack listener sees it, counts as the IPv4 address). Entries that are not
// valid_network match nothing.
using address_filter = std::function<bool(const boost::asio::ip::address&)>;
address_filter allow_from(const std::vector<std::string>& networks);

}  // namespace berth::peer
