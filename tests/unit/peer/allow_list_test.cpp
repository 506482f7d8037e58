#include "peer/allow_list.hpp"

#include <gtest/gtest.h>

#include <boost/asio/ip/address.hpp>

namespace berth::peer {
namespace {

namespace ip = boost::asio::ip;

bool allows(const address_filter& f, const char* a) {
  return f(ip::make_address(a));
}

TEST(PeerAllowList, NetworksAndAddressesAreValid) {
  for (const char* good : {"10.0.0.0/8", "10.20.0.0/16", "192.168.1.7", "192.168.1.7/32", "0.0.0.0/0", "fd00:1::/64",
                           "::1", "2001:db8::/32"}) {
    EXPECT_TRUE(valid_network(good)) << good;
  }
}

TEST(PeerAllowList, AnythingElseIsRefusedByTheConfig) {
  for (const char* bad :
       {"", "10.0.0.0/", "10.0.0.0/33", "10.1.2.3/8", "300.1.1.1", "10.0.0", "node-1.example", "10.0.0.0/8 ",
        " 10.0.0.0/8", "10.0.0.0/-1", "10.0.0.0/8/8", "fd00:1::1/64", "fd00::/129", "10.0.0.0/0x8"}) {
    EXPECT_FALSE(valid_network(bad)) << '"' << bad << '"';
  }
}

TEST(PeerAllowList, OnlyAddressesInsideTheNetworksPass) {
  const auto f = allow_from({"10.20.0.0/16", "192.168.1.7", "fd00:1::/64"});
  EXPECT_TRUE(allows(f, "10.20.0.1"));
  EXPECT_TRUE(allows(f, "10.20.255.254"));
  EXPECT_FALSE(allows(f, "10.21.0.1"));
  EXPECT_FALSE(allows(f, "10.19.255.255"));
  EXPECT_TRUE(allows(f, "192.168.1.7"));
  EXPECT_FALSE(allows(f, "192.168.1.8"));
  EXPECT_TRUE(allows(f, "fd00:1::abcd"));
  EXPECT_FALSE(allows(f, "fd00:2::1"));
  // Pods on the pod network and the loopback are outside.
  EXPECT_FALSE(allows(f, "10.244.3.5"));
  EXPECT_FALSE(allows(f, "127.0.0.1"));
  EXPECT_FALSE(allows(f, "::1"));
}

TEST(PeerAllowList, AnIPv4ClientOnADualStackListenerIsJudgedAsIPv4) {
  const auto f = allow_from({"10.20.0.0/16"});
  EXPECT_TRUE(allows(f, "::ffff:10.20.3.4"));
  EXPECT_FALSE(allows(f, "::ffff:10.21.3.4"));
  // ... and an IPv6 network does not take in IPv4-mapped strangers by accident.
  const auto v6 = allow_from({"::ffff:0:0/96"});
  EXPECT_FALSE(allows(v6, "10.1.2.3"));
}

TEST(PeerAllowList, NoValidNetworkAllowsNothing) {
  const auto f = allow_from({"not-a-network"});
  EXPECT_FALSE(allows(f, "10.0.0.1"));
  EXPECT_FALSE(allows(f, "::1"));
}

}  // namespace
}  // namespace berth::peer
