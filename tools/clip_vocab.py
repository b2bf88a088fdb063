"""The real CLIP BPE vocabulary in the Hugging Face layout (vocab.json + merges.txt).

open_clip_torch ships OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT). CLIP's own tokenizer builds
its vocabulary from it as: the 256 byte symbols, the same with '</w>', one token per merge (the
first 48,894 merges), then <|startoftext|> and <|endoftext|> — 49,408 ids, the ids of
openai/clip-vit-large-patch14's vocab.json. Used by the fixture scripts; needs open_clip_torch.
"""
import gzip
import json
import os


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_merges_and_vocab():
    # Found without importing open_clip (its import needs torchvision).
    import importlib.util
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise SystemExit("the CLIP BPE vocabulary comes from open_clip_torch: pip install open_clip_torch into this venv")
    path = os.path.join(os.path.dirname(spec.origin), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return merges, vocab


def write_clip_vocab(folder):
    """Writes folder/vocab.json and folder/merges.txt exactly as Hugging Face's CLIP repos hold them."""
    merges, vocab = clip_merges_and_vocab()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


if __name__ == "__main__":
    import sys
    write_clip_vocab(sys.argv[1])
