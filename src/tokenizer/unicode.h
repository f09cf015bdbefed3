// Small Unicode helpers the tokenizer needs: UTF-8 walking and validation, the few character
// classes Hugging Face `tokenizers` asks Rust's `char` for (is_numeric, is_whitespace, ...),
// normalization through utf8proc, GPT-2's byte <-> printable-character table, and Rust's
// `String::from_utf8_lossy` (decode must produce exactly the same U+FFFD replacements).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mosaic::unicode {

// Length in bytes of the UTF-8 sequence that starts with lead byte b (1 for invalid leads).
inline size_t utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 1;
}

// Decodes the code point at s[i] (s must be valid UTF-8) and advances i past it.
char32_t next_codepoint(std::string_view s, size_t& i);
// Appends the UTF-8 encoding of cp.
void append_utf8(std::string& out, char32_t cp);

// Byte offset of the first invalid UTF-8 sequence in s, or npos if s is valid (overlongs,
// surrogates and code points past U+10FFFF are invalid, as in Rust and Python).
size_t first_invalid_utf8(std::string_view s);
// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Rust char predicates, as used by tokenizers' pre-tokenizers and added-token matching.
bool is_numeric(char32_t cp);     // general category Nd | Nl | No (table: unicode_numeric.inc)
bool is_whitespace(char32_t cp);  // Unicode White_Space property
bool is_alphanumeric(char32_t cp);  // approximately Alphabetic | Numeric (categories L*, Nl, N*)

// tokenizers matches its regexes with Oniguruma, whose Unicode tables (16.0) are newer than
// PCRE2 10.42's (14.0), and which does not count U+180E as \s. For the few code points where the
// two disagree on \p{L} / \p{N} / \s this returns Oniguruma's class (1 = letter, 2 = number,
// 4 = space, 0 = none of these); -1 elsewhere. Table: unicode_delta.inc, made by
// scripts/gen_tokenizer_fixtures.py.
int regex_class_override(char32_t cp);

enum class Form { NFC, NFD, NFKC, NFKD };
// Unicode normalization of valid UTF-8 (utf8proc). ASCII input is returned unchanged.
std::string normalize(std::string_view s, Form form);

// GPT-2 byte-level table: every byte maps to one printable code point (bytes that are already
// printable map to themselves, the rest to U+0100 + n in byte order).
char32_t byte_to_char(uint8_t b);
// Inverse; returns -1 for code points that are not in the table.
int char_to_byte(char32_t cp);
// Maps every byte of s through byte_to_char, producing UTF-8.
std::string bytes_to_chars(std::string_view s);

}  // namespace mosaic::unicode
