#include "metrics/metrics.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace berth::metrics;

TEST(Labels, MethodsComeFromAClosedSet) {
  EXPECT_EQ(method_label("GET"), "GET");
  EXPECT_EQ(method_label("HEAD"), "HEAD");
  EXPECT_EQ(method_label("DELETE"), "DELETE");
  EXPECT_EQ(method_label("get"), "other");
  EXPECT_EQ(method_label("BREW"), "other");
  EXPECT_EQ(method_label(""), "other");
}

TEST(Labels, StatusesComeFromAClosedSet) {
  EXPECT_EQ(status_label(0), "0");
  EXPECT_EQ(status_label(200), "200");
  EXPECT_EQ(status_label(404), "404");
  EXPECT_EQ(status_label(418), "4xx");
  EXPECT_EQ(status_label(599), "5xx");
  EXPECT_EQ(status_label(600), "other");
  EXPECT_EQ(status_label(99), "other");
  std::set<std::string> seen;
  for (unsigned s = 0; s < 100000; ++s) seen.insert(status_label(s));
  EXPECT_LE(seen.size(), 40u) << "every status maps to one of a few dozen values";
}

TEST(Labels, HostileMethodsAddNoSeries) {
  registry r;
  for (int i = 0; i < 500; ++i) {
    r.http_request("invalid", "M" + std::to_string(i), 400 + i % 200, std::chrono::duration<double>(0), 0);
  }
  const auto text = r.serialize();
  std::size_t series = 0;
  for (std::size_t at = text.find("berth_http_requests_total{"); at != std::string::npos;
       at = text.find("berth_http_requests_total{", at + 1)) {
    ++series;
  }
  EXPECT_LE(series, 25u) << "500 methods and 200 statuses: at most the known statuses and two classes";
}
