// libFuzzer target: arbitrary bytes as a tokenizer.json. Loading must either succeed or throw
// mosaic::Error; a loaded tokenizer must encode and decode without crashing, and every id it
// produces must be one it can name (id_to_token never fails on encode's output).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace {

void exercise(const mosaic::Tokenizer& tok, std::string_view text) {
  std::vector<int32_t> ids;
  try {
    ids = tok.encode(text);
  } catch (const mosaic::Error&) {
    return;  // e.g. a pattern hitting PCRE2's match limit: reported, not a crash
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) std::abort();
    (void)tok.id_to_token(id);  // throws (-> abort via uncaught exception) if the id is unknown
  }
  (void)tok.decode(ids);
  (void)tok.decode(ids, /*skip_special=*/true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    const mosaic::Tokenizer tok = mosaic::Tokenizer::from_json_string(input, "fuzz.json");
    static const char* const kTexts[] = {
        "", "Hello world, it's 2024! ", "  tabs\tand\r\nnewlines\n\n", "caf\xC3\xA9 cafe\xCC\x81 \xE6\x97\xA5\xE6\x9C\xAC",
        "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 <|im_start|>x<|endoftext|> <s>", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1234567"};
    for (const char* t : kTexts) exercise(tok, t);
    // The input itself is text with plenty of JSON-ish structure; use its valid UTF-8 prefix.
    const size_t valid = std::min(mosaic::unicode::first_invalid_utf8(input), std::min<size_t>(size, 2048));
    exercise(tok, input.substr(0, valid));
    // Decoding arbitrary ids (unknown ones are skipped) must be safe too.
    std::vector<int32_t> ids;
    for (size_t i = 0; i + 1 < std::min<size_t>(size, 64); i += 2) ids.push_back(int32_t(data[i]) << 8 | data[i + 1]);
    (void)tok.decode(ids);
  } catch (const mosaic::Error&) {
    // Rejected with a message: the expected outcome for malformed input.
  }
  return 0;
}
