#!/usr/bin/env python3
"""Generate the tokenizer test fixtures with Hugging Face `tokenizers` (the reference).

Writes into tests/fixtures/tokenizer/:
  expected_<name>.json   for each tokenizer: the corpus cases {text, ids, decoded} where ids come
                         from encode(text, add_special_tokens=False).ids and decoded from
                         decode(ids, skip_special_tokens=False); for the three real tokenizers also
                         the WikiText-2 test text summary (count, FNV-1a 64 of the little-endian
                         int32 ids, first and last 200 ids).
  tiny_*/tokenizer.json  small byte-level BPE tokenizers trained here (SmolLM2 / GPT-2 style
                         pipeline) and variants of it that exercise each supported component.
  smollm2/tokenizer.json copy of models/smollm2-135m/tokenizer.json when that model is present.
and src/tokenizer/unicode_delta.inc: the code points whose regex class (\p{L}, \p{N}, \s) in
`tokenizers`' Oniguruma (Unicode 16) differs from PCRE2 10.42's (Unicode 14), see regex.cpp.

Run from the repository root: python3 scripts/gen_tokenizer_fixtures.py
The real tokenizers are read from ../shared/tokenizers/{llama3,qwen3} (beside the checkout).
"""
import copy
import json
import os
import shutil
import struct
import sys

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# ---- the corpus ------------------------------------------------------------------------------
CORPUS = [
    # empty and whitespace
    "", " ", "  ", "\t", "\n", "\r\n", "Hello world", " leading space", "trailing space ",
    "  double  spaces  and   triple   ", "\t\ttabs\tand\tmore\t", "line1\nline2\r\nline3\rline4",
    "\n\n\n", "   \n  \n\t\n", "ends with newline\n", "a\n\n\nb", "ab\r\n\r\ncd", "x  \n  y",
    "word     \n", "\u00a0nbsp\u00a0between", "\u3000ideographic\u3000space", "\u2028line\u2029para",
    "\u0085NEL\u0085", "\u180emongolian\u180evowel", "\u000b\u000cvertical tab form feed",
    "\u2000\u2001\u2002\u2003\u200a\u202f\u205f thin spaces", "a\u200bb zero width\u200c\u200d",
    # contractions, upper case and odd apostrophes
    "I'm, you're, he's, we've, they'll, I'd, don't", "I'M YOU'RE HE'S WE'VE THEY'LL I'D DON'T",
    "It'S 'S 'T 'Re 'VE 'Ll 'D", "it\u2019s curly", "'\u017f long s and 'K 'k", "rock 'n' roll '",
    "''''", "Mc'Donald's's",
    # numbers
    "0", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
    "3.14159", "1,000,000", "-42", "2024-06-01", "0x1F 0b1010 1e-5 6.02e23", "v1.2.3-rc4",
    "\u0661\u0662\u0663\u0664\u0665 arabic-indic", "\u2460\u2461\u2462 circled", "\u216b roman",
    "\u00bd \u00b2\u00b3", "\uff11\uff12\uff13\uff14 fullwidth", "\u0967\u0968\u0969 devanagari",
    "9" * 50, "a1b2c3d4", "100%", "$5.99", "\u20ac12,50",
    # code
    "def f(x):\n    return x * 2  # double\n", "if (a<=b && c!=d) {\n\treturn;\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); return 0; }\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}', "<div class=\"x\">Hello</div>",
    "ls -la | grep foo > out.txt 2>&1", "x = re.compile(r'^\\s+(\\w+)$')",
    "        deeply_indented = True\n\t\t\tmixed\t  indent", "for i in range(10):\n\tprint(i)",
    "SELECT * FROM users WHERE id = 42;", "a->b; c::d; e=>f; g!==h; i?.j ?? k",
    # multilingual
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u30ab\u30bf\u30ab\u30ca",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0416\u0418\u041a",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u", "\u0130stanbul \u0131i I\u0307", "Stra\u00dfe \u00c4\u00d6\u00dc \u1e9e",
    "\u00c7a va? O\u00f9 \u00eates-vous", "\u00bfQu\u00e9 tal? \u00a1Hola!", "hello\u4e16\u754c123abc",
    "\u0c24\u0c46\u0c32\u0c41\u0c17\u0c41 \u0ba4\u0bae\u0bbf\u0bb4\u0bcd \u10e5\u10d0\u10e0\u10d7\u10e3\u10da\u10d8",
    # decomposed vs composed (NFC matters for Qwen3)
    "cafe\u0301", "caf\u00e9", "e\u0301", "A\u030a", "\u00c5", "n\u0303o", "\u1100\u1161\u11a8",
    "a\u0323\u0302", "a\u0302\u0323", "\u212b \u2126 \u212a", "Vie\u0302\u0323t", "\u0065\u0301\u0301",
    "\u0915\u093c \u0958", "\u3060 \u305f\u3099", "\ufb01 ligature \u2163",
    # emoji
    "\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f1ef\U0001f1f5\U0001f1fa\U0001f1f8", "1\ufe0f\u20e3",
    "\u2764\ufe0f love", "I \u2764 \U0001f355!!", "\U0001f600\U0001f600\U0001f600\U0001f600",
    # special-token strings in text
    "<|begin_of_text|>Hello<|end_of_text|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<think>\nreasoning here\n</think>\n\nanswer", "<|endoftext|>", "<|begin_of_tex", "<<|im_start|>>",
    "<|im_start|><|im_start|>", " <|im_start|> spaced ", "<tool_call>{}</tool_call>",
    "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>", "<|reserved_special_token_5|>",
    "<|eot_id|><|eot_id|>", "x<|endoftext|>y", "<|im_end|>", "<|begin_of_text|><|begin_of_text|>",
    # odds and ends
    "!!!???...", "\u2014\u2013-", "\u201cquotes\u201d \u00abguillemets\u00bb", "\ufeffBOM",
    "\u0000\u0001\u007f control", "soft\u00adhyphen", "https://example.com/path?q=1&r=2#frag",
    "user@example.org", "\u2211\u222b\u2202\u221a\u221e\u2248\u2260", "\u2500\u2502\u250c\u2510",
    "a" * 300, "x" * 1000, "ab" * 200, "HELLO World hElLo", " = Robert Boulter = \n",
    " The 2 @,@ 000 @-@ year @.@ 5 ", "\U0001d400\U0001d401 math bold", "\U00031350\U0001fae8\U00011f00",
    "\U0002ebf0\U0001cc00 new", "\U000e0001 tag \U000f0000 private", "\ufffd replacement",
]

# Training text for the tiny tokenizers: the corpus plus a little prose, code and numbers.
TRAIN_TEXT = CORPUS + [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "In 1999, 42 people counted 12345 stars; by 2024 they had counted 67890 more.",
    "def tokenize(text):\n    return [t for t in text.split() if t]\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.718",
]


def fnv1a64(ids):
    h = 0xCBF29CE484222325
    for b in struct.pack("<%di" % len(ids), *ids):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def cases_for(tok, texts):
    out = []
    for t in texts:
        ids = tok.encode(t, add_special_tokens=False).ids
        out.append({"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return out


def wikitext_summary(tok):
    path = os.path.join(SHARED, "data", "wikitext-2-raw", "wiki.test.raw")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    return {"file": "data/wikitext-2-raw/wiki.test.raw", "bytes": len(text.encode("utf-8")),
            "count": len(ids), "fnv1a64": fnv1a64(ids), "first": ids[:200], "last": ids[-200:]}


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=True, indent=None, separators=(",", ":"))
        f.write("\n")


def expected(name, tok, tokenizer_ref, wikitext, corpus=None):
    obj = {"tokenizer": tokenizer_ref, "tokenizers_version": tokenizers.__version__,
           "cases": cases_for(tok, CORPUS if corpus is None else corpus)}
    # Decoding id lists that cut characters apart: single tokens and reversed sequences exercise
    # the byte-level decoder's invalid-UTF-8 replacement (Rust's from_utf8_lossy).
    decode_cases = []
    for t in ["\U0001f468\u200d\U0001f469\u200d\U0001f467", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
              "\u0928\u092e\u0938\u094d\u0924\u0947 caf\u00e9", "<|im_start|>x\U0001f600<|endoftext|>"]:
        ids = tok.encode(t, add_special_tokens=False).ids
        for chunk in [ids[i:i + 1] for i in range(len(ids))] + [ids[::-1], ids[1:], ids[:-1]]:
            for skip in [False, True]:
                decode_cases.append({"ids": chunk, "skip_special": skip,
                                     "decoded": tok.decode(chunk, skip_special_tokens=skip)})
    obj["decode_cases"] = decode_cases
    if wikitext:
        obj["wikitext"] = wikitext_summary(tok)
    write_json(os.path.join(OUT, "expected_%s.json" % name), obj)
    print("expected_%s.json: %d cases%s" % (name, len(obj["cases"]),
          ", wikitext %d ids" % obj["wikitext"]["count"] if wikitext else ""))


# ---- tiny tokenizers ---------------------------------------------------------------------------
def train_tiny():
    """A SmolLM2-style tokenizer (GPT-2 ByteLevel regex + individual digits) trained on TRAIN_TEXT."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.train_from_iterator(TRAIN_TEXT, trainer=trainer)
    return json.loads(tok.to_str())


def variants(base):
    """Each variant changes one component of the tiny tokenizer; name -> tokenizer.json dict."""
    v = {"tiny_gpt2": base}

    def var(name, fn):
        d = copy.deepcopy(base)
        fn(d)
        v[name] = d

    def pre(d, p):
        d["pre_tokenizer"] = p

    def legacy_merges(d):
        d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    var("tiny_legacy_merges", legacy_merges)
    var("tiny_prefix_space", lambda d: pre(d, {"type": "ByteLevel", "add_prefix_space": True,
                                               "trim_offsets": True, "use_regex": True}))
    var("tiny_no_regex", lambda d: pre(d, {"type": "ByteLevel", "add_prefix_space": False,
                                           "trim_offsets": True, "use_regex": False}))
    var("tiny_digits_contiguous", lambda d: pre(d, {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))
    for behavior in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for invert in [False, True]:
            name = "tiny_split_%s%s" % (behavior.lower(), "_invert" if invert else "")
            var(name, lambda d, b=behavior, i=invert: pre(d, {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"\s+|\p{N}"}, "behavior": b, "invert": i},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}))
    var("tiny_split_string", lambda d: pre(d, {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "o"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}))
    for form in ["NFC", "NFD", "NFKC", "NFKD"]:
        var("tiny_%s" % form.lower(), lambda d, f=form: d.__setitem__("normalizer", {"type": f}))
    var("tiny_norm_sequence", lambda d: d.__setitem__("normalizer", {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "NFC"}]}))

    def added_flags(d):
        d["normalizer"] = {"type": "NFKC"}
        n = len(d["model"]["vocab"])
        extra = [("<L>", dict(lstrip=True)), ("<R>", dict(rstrip=True)), ("<LR>", dict(lstrip=True, rstrip=True)),
                 ("word", dict(single_word=True)), ("\uff21\uff22", dict(normalized=True)),
                 ("<n>", dict(normalized=True, special=False)), ("<|im_start|>x", dict())]
        for i, (content, flags) in enumerate(extra):
            t = {"id": n + i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
            t.update(flags)
            d["added_tokens"].append(t)
    var("tiny_added_flags", added_flags)
    var("tiny_no_decoder", lambda d: d.__setitem__("decoder", None))
    var("tiny_ignore_merges", lambda d: d["model"].__setitem__("ignore_merges", True))
    return v


FUZZ_SEEDS = {"tiny_gpt2", "tiny_legacy_merges", "tiny_added_flags", "tiny_split_mergedwithnext_invert",
              "tiny_split_string", "tiny_nfkc", "tiny_digits_contiguous", "tiny_prefix_space", "tiny_no_decoder"}

EXTRA_CASES = [  # inputs aimed at the tiny variants' features
    "word words sword word. <L>  <R>  x <LR>  y\t<L>z", "AB \uff21\uff22 ab <n> <N>", "<|im_start|>xy <|im_start|> x",
    "word", " word ", "wordword", "<L><L>  <R><R>", "foo 12 bar 3456 baz", "one  two\n\nthree 4 5",
]


# ---- the regex Unicode table ---------------------------------------------------------------------
PCRE2_SPACES = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x180E, 0x2028, 0x2029, 0x202F,
                0x205F, 0x3000, *range(0x2000, 0x200B)}


def write_unicode_table():
    """Ranges of code points where Oniguruma (as used by tokenizers) and PCRE2 10.42 disagree.

    Oniguruma's classes are measured through tokenizers' own Split pre-tokenizer; PCRE2 10.42's
    are Unicode 14 (Python 3.11's unicodedata) with PCRE2's \\s rule (Z or HSPACE/VSPACE)."""
    import unicodedata
    from tokenizers import Regex
    assert unicodedata.unidata_version == "14.0.0", "needs Python's Unicode 14 data (Python 3.11)"
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    text = "".join(map(chr, cps))
    onig = {}
    for bit, pat in [(1, r"\p{L}"), (2, r"\p{N}"), (4, r"\s")]:
        covered = bytearray(len(cps))
        for _, (b, e) in pre_tokenizers.Split(Regex(pat), behavior="removed").pre_tokenize_str(text):
            covered[b:e] = b"\x01" * (e - b)
        for i, cp in enumerate(cps):
            if not covered[i]:
                onig[cp] = onig.get(cp, 0) | bit
    ranges = []
    for cp in cps:
        cat = unicodedata.category(chr(cp))
        pcre = (1 if cat[0] == "L" else 0) | (2 if cat[0] == "N" else 0) | (
            4 if cat[0] == "Z" or cp in PCRE2_SPACES else 0)
        cls = onig.get(cp, 0)
        if cls == pcre:
            continue
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == cls:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, cls])
    write_numeric_table(cps, text)
    path = os.path.join(ROOT, "src", "tokenizer", "unicode_delta.inc")
    with open(path, "w") as f:
        f.write("// Generated by scripts/gen_tokenizer_fixtures.py (tokenizers %s): {first, last, class}\n"
                "// where class is 1 = \\p{L}, 2 = \\p{N}, 4 = \\s, 0 = none of them, for the code points\n"
                "// whose class in tokenizers' Oniguruma differs from PCRE2 10.42's (Unicode 14).\n"
                % tokenizers.__version__)
        for i in range(0, len(ranges), 4):
            f.write(" ".join("{0x%05X, 0x%05X, %d}," % tuple(r) for r in ranges[i:i + 4]) + "\n")
    print("unicode_delta.inc: %d ranges, %d code points" % (len(ranges), sum(r[1] - r[0] + 1 for r in ranges)))


def write_numeric_table(cps, text):
    """All code points Rust's char::is_numeric accepts, measured through the Digits pre-tokenizer."""
    numeric = bytearray(len(cps))
    for piece, (b, e) in pre_tokenizers.Digits(individual_digits=True).pre_tokenize_str(text):
        if e - b == 1:
            numeric[b] = 1
    # A one-character piece is either a digit or a lone gap between two digits; gaps are
    # recognised by checking the piece with a second split that isolates nothing else.
    ranges = []
    for i, cp in enumerate(cps):
        if not numeric[i]:
            continue
        if pre_tokenizers.Digits(individual_digits=False).pre_tokenize_str("a" + chr(cp) + "a") != [
                ("a", (0, 1)), (chr(cp), (1, 2)), ("a", (2, 3))]:
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    path = os.path.join(ROOT, "src", "tokenizer", "unicode_numeric.inc")
    with open(path, "w") as f:
        f.write("// Generated by scripts/gen_tokenizer_fixtures.py (tokenizers %s): {first, last} ranges of\n"
                "// the code points Rust's char::is_numeric accepts (tokenizers' Digits pre-tokenizer).\n"
                % tokenizers.__version__)
        for i in range(0, len(ranges), 6):
            f.write(" ".join("{0x%05X, 0x%05X}," % tuple(r) for r in ranges[i:i + 6]) + "\n")
    print("unicode_numeric.inc: %d ranges, %d code points" % (len(ranges), sum(r[1] - r[0] + 1 for r in ranges)))


def unicode_edge_cases():
    """Texts holding the first and last code point of every range of the two generated tables:
    the characters whose class PCRE2 or utf8proc would get wrong without them."""
    import re
    cases = []
    for name, per_case in [("unicode_delta.inc", 1), ("unicode_numeric.inc", 8)]:
        with open(os.path.join(ROOT, "src", "tokenizer", name)) as f:
            ranges = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)", f.read())]
        for i in range(0, len(ranges), per_case):
            parts = []
            for a, b in ranges[i:i + per_case]:
                parts.append("a%sb %s1%s %s's%s\t%s" % (chr(a), chr(a), chr(b), chr(b), chr(a), chr(b)))
            cases.append(" ".join(parts))
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    write_unicode_table()
    CORPUS.extend(EXTRA_CASES)
    # Compatibility normalization (NFKC/NFKD) of characters added after Unicode ~12 differs:
    # tokenizers' tables are older than utf8proc's. None of the supported models uses it, so those
    # variants are checked on the corpus without the newest characters.
    compat_corpus = list(CORPUS)
    CORPUS.extend(unicode_edge_cases())
    for name in ["llama3", "qwen3"]:
        path = os.path.join(SHARED, "tokenizers", name, "tokenizer.json")
        expected(name, Tokenizer.from_file(path), "shared:tokenizers/%s/tokenizer.json" % name, True)

    smol = os.path.join(ROOT, "models", "smollm2-135m", "tokenizer.json")
    if os.path.exists(smol):
        dst = os.path.join(OUT, "smollm2", "tokenizer.json")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(smol, dst)
        expected("smollm2", Tokenizer.from_file(dst), "fixture:smollm2/tokenizer.json", True)
    else:
        print("models/smollm2-135m/tokenizer.json not found: SmolLM2 fixture not refreshed", file=sys.stderr)

    seeds = os.path.join(ROOT, "fuzz", "seeds", "tokenizer_json")
    os.makedirs(seeds, exist_ok=True)
    base = train_tiny()
    for name, d in variants(base).items():
        text = json.dumps(d, ensure_ascii=False, indent=None, separators=(",", ":"))
        path = os.path.join(OUT, name, "tokenizer.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        compat = "NFK" in json.dumps(d.get("normalizer"))
        expected(name, Tokenizer.from_str(text), "fixture:%s/tokenizer.json" % name, False,
                 compat_corpus if compat else None)
        if name in FUZZ_SEEDS:
            with open(os.path.join(seeds, name + ".json"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
    # Two small seeds shaped like LLaMA-3's and Qwen3's pipelines (their regex and normalizer).
    for name in ["llama3", "qwen3"]:
        with open(os.path.join(SHARED, "tokenizers", name, "tokenizer.json"), encoding="utf-8") as f:
            real = json.load(f)
        d = copy.deepcopy(base)
        d["normalizer"] = real["normalizer"]
        d["pre_tokenizer"] = real["pre_tokenizer"]
        d["decoder"] = real["decoder"]
        d["model"]["ignore_merges"] = real["model"].get("ignore_merges", False)
        d["added_tokens"] += [dict(t, id=len(d["model"]["vocab"]) + 10 + i) for i, t in enumerate(real["added_tokens"][:4])]
        with open(os.path.join(seeds, "like_%s.json" % name), "w", encoding="utf-8") as f:
            f.write(json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
