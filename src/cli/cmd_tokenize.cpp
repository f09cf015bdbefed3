// mosaic tokenize: run a tokenizer.json over a string or a file and print the ids, either as a
// JSON array (for scripts and for comparison with Hugging Face `tokenizers`) or as a listing of
// one token per line for people.
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "tokenizer/tokenizer.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace mosaic::cli {

namespace {

struct TokenizeOptions {
  std::string tokenizer;
  std::string text;
  std::string text_file;
  bool json = false;
};

// A token's decoded text, JSON-quoted so whitespace and control bytes stay visible.
std::string quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void run_tokenize(const TokenizeOptions& o) {
  const Tokenizer tok = Tokenizer::load(o.tokenizer);
  const std::string text = o.text_file.empty() ? o.text : read_file(o.text_file);
  const std::vector<int32_t> ids = tok.encode(text);
  if (o.json) {
    std::string out = "[";
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) out += ',';
      out += std::to_string(ids[i]);
    }
    out += "]\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    return;
  }
  std::printf("%6s %8s  %-24s %s\n", "index", "id", "token", "text");
  for (size_t i = 0; i < ids.size(); ++i) {
    // Pad by characters, not bytes: byte-level tokens are full of two-byte characters like 'Ġ'.
    std::string token = tok.id_to_token(ids[i]);
    size_t chars = 0;
    for (char c : token) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    if (chars < 24) token.append(24 - chars, ' ');
    std::printf("%6zu %8d  %s %s%s\n", i, ids[i], token.c_str(), quoted(tok.decode({ids[i]})).c_str(),
                tok.is_special(ids[i]) ? "  (special)" : "");
  }
  std::printf("%zu tokens, %zu bytes of text\n", ids.size(), text.size());
}

}  // namespace

void add_tokenize_command(CLI::App& app) {
  auto opts = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Encode text with a Hugging Face tokenizer.json (byte-level BPE: LLaMA-3, Qwen3, SmolLM2).\n"
      "No special tokens are added; special-token strings written in the text (e.g. "
      "<|begin_of_text|>) are recognized. Ids match the Python `tokenizers` library.");
  cmd->add_option("--tokenizer", opts->tokenizer, "tokenizer.json, or a model directory holding one")
      ->required();
  auto* text = cmd->add_option("--text", opts->text, "text to encode");
  auto* file = cmd->add_option("--text-file", opts->text_file, "file whose whole content (UTF-8) is encoded");
  text->excludes(file);
  file->excludes(text);
  cmd->add_flag("--json", opts->json, "print only a JSON array of ids");
  cmd->callback([opts, text, file] {
    if (text->count() == 0 && file->count() == 0) fail("tokenize: give --text or --text-file");
    run_tokenize(*opts);
  });
}

}  // namespace mosaic::cli
