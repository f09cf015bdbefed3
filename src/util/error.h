// Errors: every failure a user can cause (bad file, wrong shape, unknown architecture) is thrown
// as mosaic::Error with a one-line message that names the file/tensor/shape involved. The CLI
// catches it, prints "mosaic: error: <message>" and exits non-zero; nothing crashes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace mosaic {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

// fail("tensor ", name, " has shape ", s) -> throws Error with the concatenated message.
template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(detail::concat(std::forward<Args>(args)...));
}

}  // namespace mosaic

// MOSAIC_CHECK(cond, parts...): user-facing precondition; throws mosaic::Error on failure.
#define MOSAIC_CHECK(cond, ...)                       \
  do {                                                \
    if (!(cond)) ::mosaic::fail(__VA_ARGS__);         \
  } while (0)
