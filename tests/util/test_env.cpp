// util/env.h: the environment knobs' readers. A knob set to something it cannot take is an error that
// names the variable and its range (it used to fall back to the default silently in some readers).
#include "util/env.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

namespace mosaic {
namespace {

constexpr const char* kVar = "MOSAIC_TEST_ENV_KNOB";

// The message of the Error f throws, or "" (and a test failure) when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

TEST(Env, UnsetOrEmptyGivesTheDefault) {
  unsetenv(kVar);
  EXPECT_EQ(env_number(kVar, 2.5, 0, 10), 2.5);
  EXPECT_EQ(env_int(kVar, 7, 0, 10), 7);
  EXPECT_FALSE(env_number(kVar, 0, 1).has_value());
  EXPECT_TRUE(env_switch_on(kVar));
  setenv(kVar, "", 1);
  EXPECT_EQ(env_int(kVar, 7, 0, 10), 7);
  EXPECT_TRUE(env_switch_on(kVar));
  unsetenv(kVar);
}

TEST(Env, ValuesInRangeAreRead) {
  setenv(kVar, "0.75", 1);
  EXPECT_EQ(env_number(kVar, 1.0, 0, 2), 0.75);
  setenv(kVar, "16", 1);
  EXPECT_EQ(env_int(kVar, 2, 1, 16), 16);
  setenv(kVar, "1", 1);
  EXPECT_EQ(env_int(kVar, 2, 1, 16), 1);
  EXPECT_TRUE(env_switch_on(kVar));
  setenv(kVar, "0", 1);
  EXPECT_FALSE(env_switch_on(kVar));
  unsetenv(kVar);
}

TEST(Env, BadValuesAreErrorsNamingTheVariable) {
  for (const char* bad : {"fast", "3x", "1e9", "-1", "nan"}) {
    setenv(kVar, bad, 1);
    const std::string m = error_of([] { env_number(kVar, 1.0, 0, 100); });
    EXPECT_NE(m.find(kVar), std::string::npos) << bad << ": " << m;
    EXPECT_NE(m.find(bad), std::string::npos) << bad << ": " << m;
    EXPECT_NE(m.find("[0, 100]"), std::string::npos) << bad << ": " << m;
  }
  setenv(kVar, "2.5", 1);
  const std::string m = error_of([] { env_int(kVar, 1, 0, 16); });
  EXPECT_NE(m.find("integer"), std::string::npos) << m;
  setenv(kVar, "17", 1);
  EXPECT_NE(error_of([] { env_int(kVar, 1, 0, 16); }).find(kVar), std::string::npos);
  unsetenv(kVar);
}

TEST(Env, ChoicesTakeOnlyTheirValues) {
  unsetenv(kVar);
  EXPECT_EQ(env_choice(kVar, 0, {0, 8, 16}), 0);
  setenv(kVar, "16", 1);
  EXPECT_EQ(env_choice(kVar, 0, {0, 8, 16}), 16);
  for (const char* bad : {"12", "8.0", "fast", "-8"}) {
    setenv(kVar, bad, 1);
    const std::string m = error_of([] { env_choice(kVar, 0, {0, 8, 16}); });
    EXPECT_NE(m.find(kVar), std::string::npos) << bad << ": " << m;
    EXPECT_NE(m.find("0, 8, 16"), std::string::npos) << bad << ": " << m;
  }
  unsetenv(kVar);
}

}  // namespace
}  // namespace mosaic
