#!/usr/bin/env python3
"""Reference ids for the Swift CLIP tokenizer (Sources/DiffusionCore/Text/).

Usage:  /work/venv/bin/python tools/make_tokenizer_fixtures.py [--out DIR]

Writes (replacing them) under Tests/Fixtures/tokenizer/ (or DIR):
  sd1/, sd2/          diffusers `tokenizer/` folders: vocab.json and merges.txt are relative symlinks to
                      ../../clip_vocab/ (the real CLIP vocabulary, tools/clip_vocab.py); tokenizer_config.json and
                      special_tokens_map.json are written by hand to mirror the hub repos:
                      sd1 = runwayml/stable-diffusion-v1-5 (openai/clip-vit-large-patch14): bos/eos/unk as
                            {"__type": "AddedToken", ..., "normalized": true} objects, pad "<|endoftext|>";
                      sd2 = stabilityai/stable-diffusion-2-1 style: every token a plain string, pad "!".
  variants/<name>/    more folder layouts (added_tokens_decoder as transformers >= 4.34 saves it, no config
                      files at all, objects without "normalized", model_max_length 64, ...).
  corpus.json         >= 250 prompts; for each: "sd1"/"sd2" = tokenizer(p, padding="max_length", max_length=77,
                      truncation=True).input_ids and "tokens_sd1"/"tokens_sd2" = tokenizer(p,
                      add_special_tokens=False).input_ids (untruncated BPE ids, added tokens included).
  variants.json       for each variant folder: its max_length and the ids of a probe set of prompts.
  README.md           what is here, and where transformers 4's slow tokenizer would differ.

The reference is what `transformers.CLIPTokenizer.from_pretrained(folder)` returns in this venv: in
transformers 5.25 that class is `transformers.models.clip.tokenization_clip.CLIPTokenizer`, a
`TokenizersBackend` over the Rust `tokenizers` library (0.23); `CLIPTokenizerFast` is the same class.
Its pipeline: added tokens split out (non-normalized ones on the raw text, normalized ones on the
normalized text); normalizer NFC -> Replace(\\s+, " ") -> Lowercase (per character, no final-sigma rule);
pre-tokenizer Split(CLIP's regex, removed, invert) -> ByteLevel(use_regex=True) (GPT-2's regex, which
re-splits a literal "<|startoftext|>" that reached it into "<|", "startoftext", "|>"); BPE with "</w>"
end-of-word suffix; RobertaProcessing adds bos/eos. No ftfy, no control-character removal, no CJK spacing.

transformers 4's slow Python CLIPTokenizer (removed in 5) cleaned text differently when ftfy was absent
(BasicTokenizer: control characters dropped, CJK ideographs split, Python's str.lower). The script
re-implements that slow tokenizer from the 4.x source and reports, in README.md, which corpus prompts
it would tokenize differently -- for information only; the fixtures hold the transformers 5 ids.

Deterministic: fixed prompt lists and seeded generators; a rerun writes identical files.
"""
import argparse
import json
import os
import random
import shutil
import sys
import unicodedata

import regex
import tokenizers
import transformers
from transformers import CLIPTokenizer
from transformers.tokenization_python import _is_control, _is_whitespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_vocab import bytes_to_unicode  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "Tests", "Fixtures")
MAX_LENGTH = 77


# ----------------------------------------------------------------------------------------------
# Folders


def added(content, normalized, typed):
    token = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if typed else token


SD1_CONFIG = {
    "add_prefix_space": False,
    "bos_token": added("<|startoftext|>", True, True),
    "do_lower_case": True,
    "eos_token": added("<|endoftext|>", True, True),
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": added("<|endoftext|>", True, True),
}
SD1_SPECIAL = {
    "bos_token": added("<|startoftext|>", True, False),
    "eos_token": added("<|endoftext|>", True, False),
    "pad_token": "<|endoftext|>",
    "unk_token": added("<|endoftext|>", True, False),
}
SD2_CONFIG = {
    "add_prefix_space": False,
    "bos_token": "<|startoftext|>",
    "do_lower_case": True,
    "eos_token": "<|endoftext|>",
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "stabilityai/stable-diffusion-2-1",
    "pad_token": "!",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": "<|endoftext|>",
}
SD2_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}


def decoder_entry(content, normalized, special=True):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": special}


# name -> (tokenizer_config.json or None, special_tokens_map.json or None, description)
VARIANTS = {
    "added_tokens_decoder": (
        {
            "add_prefix_space": False,
            "added_tokens_decoder": {
                "49406": decoder_entry("<|startoftext|>", True),
                "49407": decoder_entry("<|endoftext|>", True),
            },
            "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True, "do_lower_case": True,
            "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
            "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
        },
        # Ignored by transformers when the config has added_tokens_decoder (pad would be "!" otherwise).
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"},
        "transformers >= 4.34 layout (SDXL's tokenizer/): added_tokens_decoder, both specials normalized; "
        "special_tokens_map.json is then not read",
    ),
    "added_tokens_decoder_pad_bang": (
        {
            "add_prefix_space": False,
            "added_tokens_decoder": {
                "0": decoder_entry("!", False),
                "49406": decoder_entry("<|startoftext|>", True),
                "49407": decoder_entry("<|endoftext|>", False),
            },
            "bos_token": "<|startoftext|>", "clean_up_tokenization_spaces": True, "do_lower_case": True,
            "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 77,
            "pad_token": "!", "tokenizer_class": "CLIPTokenizer", "unk_token": "<|endoftext|>",
        },
        None,
        "SDXL tokenizer_2 style: pad '!' declared in added_tokens_decoder",
    ),
    "no_config": (None, None, "vocab.json + merges.txt only: transformers' CLIPTokenizer defaults"),
    "objects_without_normalized": (
        {
            "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>"},
            "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>"},
            "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>"},
            "pad_token": {"__type": "AddedToken", "content": "<|endoftext|>"},
            "model_max_length": 77,
        },
        None,
        "AddedToken objects in tokenizer_config.json without 'normalized' (AddedToken's default: normalized)",
    ),
    "special_map_objects_without_normalized": (
        {"model_max_length": 77},
        {
            "bos_token": {"content": "<|startoftext|>"},
            "eos_token": {"content": "<|endoftext|>"},
            "unk_token": {"content": "<|endoftext|>"},
            "pad_token": {"content": "<|endoftext|>", "normalized": True},
        },
        "special_tokens_map.json objects without 'normalized' (special, so not normalized by default)",
    ),
    "max_length_64": (
        dict(SD1_CONFIG, model_max_length=64),
        SD1_SPECIAL,
        "SD1 with model_max_length 64",
    ),
}


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def make_folder(path, config, special, depth):
    os.makedirs(path)
    up = "/".join([".."] * depth)
    for name in ("vocab.json", "merges.txt"):
        os.symlink(f"{up}/clip_vocab/{name}", os.path.join(path, name))
    if config is not None:
        write_json(os.path.join(path, "tokenizer_config.json"), config)
    if special is not None:
        write_json(os.path.join(path, "special_tokens_map.json"), special)


# ----------------------------------------------------------------------------------------------
# Corpus

PLAIN = [
    "a photo of an astronaut riding a horse on mars",
    "a photograph of a cat sitting on a windowsill, golden hour, 35mm",
    "portrait of a woman, highly detailed, digital painting, artstation, concept art, sharp focus, illustration",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile, outdoors",
    "a cozy cabin in the snowy mountains at night, warm light in the windows",
    "cyberpunk city street at night, neon signs, rain, reflections, by greg rutkowski",
    "an oil painting of a bowl of fruit in the style of cezanne",
    "ultra realistic photo of a red fox in a forest, 8k, bokeh",
    "a watercolor painting of a lighthouse on a cliff",
    "isometric view of a tiny medieval village, low poly, blender render",
    "studio ghibli style landscape with rolling hills and a small train",
    "A Highly Detailed Matte Painting Of A Castle In The Clouds",
    "steampunk airship flying over victorian london, sepia tones",
    "close-up macro photograph of a dew drop on a leaf",
    "logo of a coffee shop, minimalist, vector art, flat design",
    "a corgi wearing sunglasses on the beach",
    "the starry night by vincent van gogh, but with cats",
    "pixel art of a knight fighting a dragon, 16-bit, snes",
    "a bowl of ramen, food photography, top-down view",
    "underwater coral reef with tropical fish, national geographic",
    "low quality, blurry, jpeg artifacts, watermark, text, signature",
    "ugly, deformed, extra fingers, bad anatomy, bad hands, missing limbs",
    "photo of a 1970s living room, film grain, kodak portra 400",
    "a tabby cat, sitting; a dog - lying down",
    "concept art of an alien planet with two suns, trending on artstation",
    "a knolling photo of camping gear",
    "hyperrealistic, octane render, unreal engine 5, volumetric lighting, ray tracing",
    "an anime girl with pink hair holding an umbrella in the rain",
    "a futuristic sports car, side view, white background, product shot",
    "a bustling market in marrakech, vibrant colors, wide angle",
    "black and white photo of new york city in 1950",
    "a medieval knight in shining armor, dramatic lighting, cinematic",
    "a fantasy forest with glowing mushrooms and fireflies",
    "a teddy bear on a skateboard in times square",
    "a plate of sushi on a wooden table, shallow depth of field",
    "an astronaut lounging in a tropical resort in space, vaporwave",
    "a painting of a fox in the style of claude monet",
    "a cute robot watering plants in a greenhouse",
    "epic fantasy battle scene, thousands of soldiers, wide shot",
    "a single red rose in a glass vase, still life",
]

SPECIAL = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|startoftext|>a cat<|endoftext|>",
    "a <|endoftext|> b",
    "cat<|endoftext|>dog",
    "x<|startoftext|>y",
    "<|ENDOFTEXT|>",
    "<|STARTOFTEXT|>",
    "<|EndOfText|> mixed case",
    "<|endoftext|><|endoftext|><|endoftext|>",
    "<|endoftext",
    "|endoftext|>",
    "<|startoftext|>'s",
    "<|endoftext|>\u0338",
    "<|startoftext|>\u0338",
    "!<|endoftext|>",
    "<<|endoftext|>>",
    "<|startoftext|><|startoftext|>",
    "the <|end of text|> is not special",
    "< | endoftext | >",
    "\u00a0<|endoftext|>\u00a0",
    "<|endoftext|>\u0301",
    "<|ＥＮＤＯＦＴＥＸＴ|>",
]

WEIGHTING = [
    "(masterpiece:1.2), (best quality:1.4), ((detailed)), [blurry]",
    "a (red:1.5) car and a [[blue]] house",
    "(((ultra detailed))) {masterpiece} <lora:foo:0.8>",
    "prompt AND another prompt :: 2",
    "a photo of [cat:dog:0.5]",
    "cat:1.2 dog::0.5 bird:::",
]

ACCENTS = [
    "café", "naïve", "Ångström", "Zoë", "crème brûlée", "São Paulo", "Dvořák", "Łódź", "Ærøskøbing",
    "façade résumé déjà vu", "El Niño jalapeño", "Björk Guðmundsdóttir", "ÉCOLE NORMALE SUPÉRIEURE",
    "Ä Ö Ü ä ö ü", "Œuvre œuvre", "Ḿ ḿ ẞ",
]

SCRIPTS = [
    "中文", "日本語のテキスト", "한국어", "中文 English 混合", "東京タワーの夜景、高画質",
    "一只猫坐在窗台上", "가나다라마바사", "Привет, мир! Москва", "Ελληνικά κείμενα", "עברית טקסט",
    "العربية نص", "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Հայերեն",
    "𠀀𠀁𪜀 rare ideographs", "ｶﾀｶﾅ half-width katakana", "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 math letters",
    "ㄅㄆㄇ bopomofo", "ᚠᚢᚦ runes", "𓀀𓀁 hieroglyphs",
]

EMOJI = [
    "😀", "a cat 🐱 with a hat 🎩", "🔥🔥🔥", "👍🏽", "👩‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "❤️ love", "🇯🇵🇺🇸 flags",
    "👨🏿‍💻 coder", "✨ sparkle ✨", "☕️ coffee", "🧑‍🚀", "emoji at end😀", "1️⃣ keycap", "🫠 melting",
]

LIGATURES_WIDTH = [
    "ﬁsh ﬂower ﬀ ﬃ ﬄ ﬆ", "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "ＡＢＣ１２３！？", "ｈｅｌｌｏ，ｗｏｒｌｄ",
    "™ © ® ℠", "ℌ ℍ ℕ ℙ", "Ⅻ Ⅳ ⅻ ⅳ", "㍻ ㎏ ㎡", "Ǆ ǅ ǆ", "K Kelvin sign", "Å angstrom sign",
]

PUNCT = [
    "!!!???", "...", "—–", "wow!!!", "what?!", "hello... world", "a—b–c", "«quoted» „german“ ‘single’ “double”",
    "semi;colon:colon", "#hashtag @mention $100 %50 ^caret &and *star", "~tilde `backtick` |pipe| \\backslash/",
    "<>[]{}()", "!", "! ! !", "a!", "!a", "?!", "hello!world", "end.", "...and so on…", "¡Hola! ¿Qué?",
    "2+2=4", "a_b-c.d", "C++ / C# / F#", "http://example.com/path?q=1&x=2", "email@example.com",
    "'quoted'", "\"double quoted\"", "''", "'", "''s", "!'s", "'sx", "'abc", "rock'n'roll", "'ſ long s",
]

CONTRACTIONS = [
    "don't", "it's", "we'll", "I'M", "they've", "O'Neil", "you're", "he'd", "can't won't shouldn't",
    "DON'T STOP", "It'S", "we'Re", "y'all", "'tis", "the '90s", "rock 'n' roll", "don’t (curly)",
    "it''s", "'s'", "'ll've'd",
]

NUMBERS = [
    "2024", "3.14", "1,000,000", "½", "²", "Ⅻ", "٠١٢٣٤٥٦٧٨٩", "१२३", "①②③", "0x1F", "1e-5", "-42",
    "4k 8k 16k", "1920x1080", "v1.5", "sd2.1", "12:30pm", "50%", "#1", "007", "¼ ¾ ⅓", "²³¹", "۱۲۳",
    "一二三", "〇", "𝟙𝟚𝟛", "⑩⑳", "Ⅰ Ⅱ Ⅲ",
]

WHITESPACE = [
    "", " ", "   ", "\t", "\n", "\r\n", "a\tb", "a\nb", "a\r\nb", "line one\nline two\r\nline three",
    "a\u00a0b", "a\u200bb", "zero\u200bwidth\u200bspaces", "a\u3000b", "a\u2003b", "a\u2028b", "a\u2029b",
    "a\u0085b", "a\u000bb\u000cc", "a\u001cb\u001dc\u001ed\u001ff", "  leading", "trailing  ", "  both  ",
    "a  \t\n  b", "a\u180eb", "a\u200db", "a\u200cb", "a\u2060b", "\ufeffbom", "a\u00adb", "a\u202fb\u205fc",
    "a\u1680b", "\u00a0\u00a0",
]

CONTROL = [
    "a\x00b", "\x00", "a\x01b\x02c", "bell\x07", "esc\x1b[31mred", "del\x7f", "c1\x80\x9f", "a\ufffdb", "\ufffd",
    "rtl\u202eoverride", "\ue000 private use", "\U000f0000 plane 15", "\ufffe\uffff nonchars",
    "unassigned \u0378 \U000e0000", "tag\U000e0041\U000e007f",
]

COMBINING = [
    "e\u0301", "cafe\u0301", "E\u0301COLE", "a\u0308", "n\u0303", "A\u030a", "\u0301", "\u0301\u0301abc",
    "o\u0302\u0323", "o\u0323\u0302", "\u1e69 vs s\u0323\u0307", "ḱ ǘ", "x\u0301y", "Ω\u0301", "1\u0301", "!\u0301",
    "\u1100\u1161\u11a8 jamo", "\u0915\u093c", "ñ vs n\u0303", "Z\u0351\u0352\u0353algo text", ">\u0338 <\u0338 =\u0338",
]

CASING = [
    "İstanbul", "ıi İI", "ISTANBUL istanbul", "straße", "STRASSE", "ß ẞ", "ΣΑΣ", "ΟΔΥΣΣΕΥΣ", "σας ς",
    "ΌΣΟΣ", "ǅungla", "ᾼ ᾳ", "ﬅ", "Ǳ", "ȺȾ", "ꟲ ꟳ ꟴ", "ⓐⒶ", "Ω ω Ω", "ÿŸ", "Ⓐ circled",
    "\ua7ce\ua7cf unicode 17", "\U00010940\U00010941 sidetic", "\u088f arabic 17", "\u1c89\u1c8a tje",
]

LONG = [
    " ".join(["word"] * 300),
    " ".join(("a photo of the most beautiful landscape in the world with mountains rivers and trees " * 20).split()[:300]),
    "a" * 200,
    "supercalifragilisticexpialidocious" * 6,
    "Ab" * 100,
    "!" * 200,
    "😀" * 80,
    "中" * 120,
    "1" * 150,
    "a, " * 150,
]


def random_unicode(rng, n):
    """Scalars from assorted blocks, never surrogates."""
    blocks = [
        (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x250, 0x36F), (0x370, 0x3FF), (0x400, 0x52F),
        (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x1E00, 0x1FFF),
        (0x2000, 0x206F), (0x2070, 0x2BFF), (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
        (0xA000, 0xABFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xF900, 0xFFFF), (0x10000, 0x1FFFF),
        (0x1F300, 0x1FAFF), (0x20000, 0x2FFFF), (0x30000, 0x3134F), (0xE0000, 0xE01EF), (0xF0000, 0x10FFFF),
    ]
    out = []
    for _ in range(n):
        lo, hi = blocks[rng.randrange(len(blocks))]
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def random_prompts():
    rng = random.Random(20240607)
    prompts = [random_unicode(rng, rng.randint(1, 40)) for _ in range(60)]
    words = ["cat", "Dog", "the", "a", "photo", "of", "'s", "don't", "!", "?!", "...", "(", ")", ":1.2", "<|endoftext|>",
             "<|startoftext|>", "café", "中文", "😀", "2024", "\t", "\n", "  ", "ß", "İ", "e\u0301", "-", "，", "ﬁ", "Ⅻ"]
    for _ in range(40):
        n = rng.randint(1, 25)
        sep = ["", " ", " ", " "]
        prompts.append("".join(rng.choice(words) + rng.choice(sep) for _ in range(n)))
    return prompts


def corpus():
    prompts = (PLAIN + SPECIAL + WEIGHTING + ACCENTS + SCRIPTS + EMOJI + LIGATURES_WIDTH + PUNCT + CONTRACTIONS
               + NUMBERS + WHITESPACE + CONTROL + COMBINING + CASING + LONG + random_prompts())
    seen, out = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


PROBES = [
    "a photo of a cat", "", "wow!!! that's great!", "<|startoftext|>", "<|endoftext|>", "<|STARTOFTEXT|>",
    "<|ENDOFTEXT|>", "a<|endoftext|>b", "<|endoftext|>\u0338", "<|startoftext|>\u0338", "!\u0301", "hi!",
    "İstanbul ΣΑΣ", " ".join(["word"] * 100), "中文 😀 e\u0301",
]


# ----------------------------------------------------------------------------------------------
# transformers 4.x slow CLIPTokenizer without ftfy, for the comparison only


class SlowV4:
    """transformers 4.x CLIPTokenizer._tokenize with BasicTokenizer(strip_accents=False, do_split_on_punc=False),
    plus the split on added tokens (the special tokens, matched literally) that PreTrainedTokenizer.tokenize did."""

    def __init__(self, folder, specials):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            merges = f.read().strip().split("\n")[1:49152 - 256 - 2 + 1]
        self.ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pat = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)
        self.specials = sorted(set(specials), key=len, reverse=True)
        self.split = regex.compile("(" + "|".join(regex.escape(s) for s in self.specials) + ")")

    @staticmethod
    def basic(text):
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            out.append(" " if _is_whitespace(ch) else ch)
        text = "".join(out)
        text = "".join(f" {c} " if SlowV4.cjk(ord(c)) else c for c in text)
        text = unicodedata.normalize("NFC", text)
        return " ".join(" ".join(t.lower() for t in text.split()).split())

    @staticmethod
    def cjk(cp):
        return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
                or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)

    def bpe(self, token):
        if token in ("<|startoftext|>", "<|endoftext|>"):
            return [token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == bigram[0] and word[i + 1] == bigram[1]:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        return list(word)

    def tokenize(self, text):
        ids = []
        for part in self.split.split(text):
            if part in self.specials:
                ids.append(self.encoder[part])
                continue
            for tok in regex.findall(self.pat, self.basic(part)):
                mapped = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
                ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids


# ----------------------------------------------------------------------------------------------


def reference(folder):
    tok = CLIPTokenizer.from_pretrained(folder)
    assert type(tok) is transformers.models.clip.tokenization_clip.CLIPTokenizer, type(tok)
    assert isinstance(tok, transformers.tokenization_utils_tokenizers.TokenizersBackend)
    return tok


def ids_for(tok, prompts, max_length):
    padded = [tok(p, padding="max_length", max_length=max_length, truncation=True).input_ids for p in prompts]
    plain = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    for p, a, b in zip(prompts, padded, plain):
        n = max_length - 2
        want = [tok.bos_token_id] + b[:n] + [tok.eos_token_id] + [tok.pad_token_id] * max(0, n - len(b))
        assert a == want, (p, a, want)
    return padded, plain


def dump_compact(path, obj):
    """JSON with one prompt per line (ASCII, so every byte of every prompt is explicit)."""
    with open(path, "w", encoding="ascii") as f:
        f.write("{\n")
        keys = list(obj)
        for i, k in enumerate(keys):
            v = obj[k]
            f.write(f"  {json.dumps(k)}: ")
            if isinstance(v, list) and v and isinstance(v[0], dict):
                f.write("[\n")
                f.write(",\n".join("    " + json.dumps(e, separators=(",", ":")) for e in v))
                f.write("\n  ]")
            else:
                f.write(json.dumps(v))
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(FIXTURES, "tokenizer"))
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()  # "sequence length is longer than ..." is expected here
    out = os.path.abspath(args.out)
    vocab = os.path.join(os.path.dirname(out), "clip_vocab")
    if not (os.path.isfile(os.path.join(vocab, "vocab.json")) and os.path.isfile(os.path.join(vocab, "merges.txt"))):
        sys.exit(f"{vocab}/ must hold the CLIP vocabulary (tools/clip_vocab.py)")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    make_folder(os.path.join(out, "sd1"), SD1_CONFIG, SD1_SPECIAL, 2)
    make_folder(os.path.join(out, "sd2"), SD2_CONFIG, SD2_SPECIAL, 2)
    for name, (config, special, _) in VARIANTS.items():
        make_folder(os.path.join(out, "variants", name), config, special, 3)

    prompts = corpus()
    assert len(prompts) >= 250, len(prompts)
    sd1, sd2 = reference(os.path.join(out, "sd1")), reference(os.path.join(out, "sd2"))
    assert (sd1.bos_token_id, sd1.eos_token_id, sd1.pad_token_id) == (49406, 49407, 49407)
    assert (sd2.bos_token_id, sd2.eos_token_id, sd2.pad_token_id) == (49406, 49407, 0)
    p1, t1 = ids_for(sd1, prompts, MAX_LENGTH)
    p2, t2 = ids_for(sd2, prompts, MAX_LENGTH)
    entries = [{"text": p, "sd1": a, "sd2": b, "tokens_sd1": c, "tokens_sd2": d}
               for p, a, b, c, d in zip(prompts, p1, p2, t1, t2)]
    dump_compact(os.path.join(out, "corpus.json"), {
        "description": "tokenizer(text, padding='max_length', max_length=77, truncation=True).input_ids (sd1, sd2) "
                       "and tokenizer(text, add_special_tokens=False).input_ids (tokens_sd1, tokens_sd2)",
        "reference": f"transformers {transformers.__version__} CLIPTokenizer (TokenizersBackend), tokenizers {tokenizers.__version__}",
        "max_length": MAX_LENGTH,
        "prompts": entries,
    })

    variants = []
    for name, (config, special, description) in VARIANTS.items():
        tok = reference(os.path.join(out, "variants", name))
        max_length = (config or {}).get("model_max_length", 77)
        padded, plain = ids_for(tok, PROBES, max_length)
        variants.append({"name": name, "description": description, "max_length": max_length,
                         "bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
                         "probes": [{"text": p, "ids": a, "tokens": b} for p, a, b in zip(PROBES, padded, plain)]})
    dump_compact(os.path.join(out, "variants.json"), {
        "description": "per variant folder: tokenizer(text, padding='max_length', max_length=max_length, "
                       "truncation=True).input_ids (ids) and tokenizer(text, add_special_tokens=False).input_ids (tokens)",
        "reference": f"transformers {transformers.__version__} CLIPTokenizer (TokenizersBackend), tokenizers {tokenizers.__version__}",
        "variants": variants,
    })

    # How transformers 4's slow tokenizer (no ftfy) would differ on the corpus, for the README.
    slow1 = SlowV4(os.path.join(out, "sd1"), ["<|startoftext|>", "<|endoftext|>"])
    slow2 = SlowV4(os.path.join(out, "sd2"), ["<|startoftext|>", "<|endoftext|>", "!"])
    diff1 = [p for p, t in zip(prompts, t1) if slow1.tokenize(p) != t]
    diff2 = [p for p, t in zip(prompts, t2) if slow2.tokenize(p) != t]
    write_readme(out, prompts, diff1, diff2)
    print(f"{len(prompts)} prompts; slow v4 differs on {len(diff1)} (sd1) / {len(diff2)} (sd2)")


def write_readme(out, prompts, diff1, diff2):
    randoms = set(random_prompts())
    listed = [p for p in diff1 if p not in randoms]
    lines = [
        "# Tokenizer fixtures",
        "",
        "Written by `tools/make_tokenizer_fixtures.py` (see its docstring); do not edit by hand.",
        "",
        f"Reference: `transformers.CLIPTokenizer.from_pretrained(folder)` of transformers {transformers.__version__}",
        f"(a `TokenizersBackend` over tokenizers {tokenizers.__version__}; `CLIPTokenizerFast` is the same class).",
        "",
        "- `sd1/`, `sd2/`: tokenizer folders (vocab.json and merges.txt link to `../../clip_vocab/`).",
        f"- `corpus.json`: {len(prompts)} prompts with their ids for both folders.",
        "- `variants/`, `variants.json`: other config layouts and the ids of a few probe prompts.",
        "",
        "## transformers 4's slow tokenizer",
        "",
        "transformers 5 has no slow CLIP tokenizer. The 4.x slow one, with BasicTokenizer cleaning since ftfy is not",
        "installed, would give other ids for "
        f"{len(diff1)} corpus prompts with the sd1 folder ({len(diff2)} with sd2): {len(diff1) - len(listed)} of the",
        f"{len(randoms)} seeded random prompts and these (Python's ascii()). It drops control and format characters",
        "(ZWJ, ZWSP, soft hyphen, BOM, U+FFFD, unassigned and private-use scalars), puts spaces around CJK ideographs,",
        "lower-cases with Python's str.lower (final sigma), matches 's/'t/... case-insensitively (\"'\u017f\"), and",
        "treats U+0085, U+000B, U+000C, U+001C-U+001F differently as whitespace.",
        "",
    ]
    lines += ["    " + ascii(p)[:120] for p in listed]
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
