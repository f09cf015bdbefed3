#include <gtest/gtest.h>

#include <map>

#include "model/sampler.h"
#include "util/error.h"

namespace mosaic {
namespace {

TEST(Sampler, GreedyIsArgmax) {
  const float l[] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  Sampler s({0.0f, 1.0f, 7});
  EXPECT_EQ(s.sample(l, 5), 1);  // tie -> lowest id
}

TEST(Sampler, TinyTopPKeepsOnlyTheBestAndSeedsReproduce) {
  const float l[] = {0.0f, 1.0f, 2.5f, 2.0f};
  Sampler s({1.0f, 1e-6f, 1});
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(l, 4), 2);
  Sampler a({1.0f, 1.0f, 42}), b({1.0f, 1.0f, 42});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 2000; ++i) {
    const int32_t x = a.sample(l, 4);
    EXPECT_EQ(x, b.sample(l, 4));
    counts[x]++;
  }
  // p = softmax(l) = {0.046, 0.124, 0.508, 0.308}: within 5 sigma of 2000 draws.
  EXPECT_NEAR(counts[2] / 2000.0, 0.508, 0.06);
  EXPECT_NEAR(counts[0] / 2000.0, 0.046, 0.025);
}

TEST(Sampler, RejectsBadOptions) {
  EXPECT_THROW(Sampler({-1.0f, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 1.5f, 0}), Error);
}

}  // namespace
}  // namespace mosaic
