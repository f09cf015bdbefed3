#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <array>
#include <iterator>
#include <cstdlib>
#include <memory>

#include "util/error.h"

namespace mosaic::unicode {

char32_t next_codepoint(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const size_t n = utf8_len(b0);
  if (n == 1 || i + n > s.size()) {
    ++i;
    return b0;
  }
  char32_t cp = b0 & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

namespace {

// Number of bytes (1..3) forming the longest valid prefix of a UTF-8 sequence at s[i], and
// whether that prefix is a complete sequence. The allowed range of the second byte excludes
// overlongs (E0, F0), surrogates (ED) and values past U+10FFFF (F4), as in the Unicode
// "maximal subpart" rule that Rust's from_utf8_lossy follows.
struct Prefix {
  size_t len;
  bool complete;
};

Prefix valid_prefix(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {1, true};
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {1, false};  // continuation byte or a lead that can never start a valid sequence
  }
  size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
  }
  return {k, k == need};
}

}  // namespace

size_t first_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Prefix p = valid_prefix(s, i);
    if (!p.complete) return i;
    i += p.len;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const Prefix p = valid_prefix(bytes, i);
    if (p.complete) {
      out.append(bytes.substr(i, p.len));
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
    }
    i += p.len;
  }
  return out;
}

namespace {
struct ClassRange {
  char32_t first, last;
  int cls;
};
constexpr ClassRange kRegexDelta[] = {
#include "tokenizer/unicode_delta.inc"
};
}  // namespace

int regex_class_override(char32_t cp) {
  if (cp < kRegexDelta[0].first) return -1;
  // Binary search over the sorted, disjoint ranges.
  size_t lo = 0, hi = std::size(kRegexDelta);
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (kRegexDelta[mid].last < cp) lo = mid + 1;
    else hi = mid;
  }
  return (lo < std::size(kRegexDelta) && kRegexDelta[lo].first <= cp) ? kRegexDelta[lo].cls : -1;
}

namespace {
struct NumericRange {
  char32_t first, last;
};
constexpr NumericRange kNumeric[] = {
#include "tokenizer/unicode_numeric.inc"
};
}  // namespace

bool is_numeric(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  // Measured from tokenizers itself: Rust's Unicode tables are newer than utf8proc's.
  size_t lo = 0, hi = std::size(kNumeric);
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (kNumeric[mid].last < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < std::size(kNumeric) && kNumeric[lo].first <= cp;
}

bool is_whitespace(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_alphanumeric(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z');
  if (const int cls = regex_class_override(cp); cls >= 0) return cls == 1 || cls == 2;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

std::string normalize(std::string_view s, Form form) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii || s.empty()) return std::string(s);  // every normalization form fixes ASCII
  int options = UTF8PROC_STABLE;
  switch (form) {
    case Form::NFC: options |= UTF8PROC_COMPOSE; break;
    case Form::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case Form::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case Form::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                   static_cast<utf8proc_ssize_t>(s.size()), &out, static_cast<utf8proc_option_t>(options));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> guard(out, &std::free);
  if (n < 0) fail("unicode normalization failed: ", utf8proc_errmsg(n));
  return std::string(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
}

namespace {

struct ByteTable {
  std::array<char32_t, 256> to_char{};
  std::array<std::string, 256> to_utf8;
  ByteTable() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      append_utf8(to_utf8[b], to_char[b]);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

}  // namespace

char32_t byte_to_char(uint8_t b) { return byte_table().to_char[b]; }

int char_to_byte(char32_t cp) {
  if (cp < 0x100) {
    const bool printable = (cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE);
    return printable ? static_cast<int>(cp) : -1;
  }
  if (cp >= 0x100 && cp < 0x100 + 68) {
    // The 68 non-printable bytes, in increasing byte order, took U+0100.. U+0143.
    static const auto inverse = [] {
      std::array<int, 68> inv{};
      for (int b = 0; b < 256; ++b) {
        const char32_t c = byte_table().to_char[b];
        if (c >= 0x100) inv[c - 0x100] = b;
      }
      return inv;
    }();
    return inverse[cp - 0x100];
  }
  return -1;
}

std::string bytes_to_chars(std::string_view s) {
  const ByteTable& t = byte_table();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out.append(t.to_utf8[static_cast<unsigned char>(c)]);
  return out;
}

}  // namespace mosaic::unicode
