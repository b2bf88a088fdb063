#!/usr/bin/env bash
# The `diffusion` command-line program: output, PNG validity, and one-line errors with exit codes.
set -u
cli="$1"
fixtures="$(cd "$(dirname "$0")/../Fixtures/unet" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# info
out="$("$cli" info --model "$fixtures/class_cond_null")" || fail "info exited $?"
grep -q "UNet2DModel" <<<"$out" || fail "info does not name the network: $out"
grep -q "unconditional label 10" <<<"$out" || fail "info does not report the null class: $out"

# generate: a grid of 3 classes... all 10 real classes x 2, guided; stderr is not a terminal, so no progress bar
"$cli" generate --model "$fixtures/class_cond_null" --class all --count 2 --guidance 2 --scheduler ddim \
    --steps 3 --scale 1 --output "$tmp/grid.png" >"$tmp/out.txt" 2>"$tmp/err.txt" || fail "generate exited $?"
[ ! -s "$tmp/err.txt" ] || fail "generate wrote to stderr when not a terminal: $(cat "$tmp/err.txt")"
grep -q "wrote $tmp/grid.png (20 images, 10x2 grid" "$tmp/out.txt" || fail "generate summary: $(cat "$tmp/out.txt")"
python3 - "$tmp/grid.png" <<'PY' || fail "grid.png is not the expected PNG"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n"
pos, chunks = 8, {}
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
    chunks.setdefault(kind, b"")
    chunks[kind] += body
    pos += 12 + n
w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
# 2 columns, 10 rows of 16x16 images at scale 1 with 2-pixel gaps; RGB
assert (w, h, depth, color) == (2 * 16 + 3 * 2, 10 * 16 + 11 * 2, 8, 2), (w, h, depth, color)
raw = zlib.decompress(chunks[b"IDAT"])
assert len(raw) == h * (1 + 3 * w)
PY

# same seed, same bytes
"$cli" generate --model "$fixtures/plain" --scheduler ddim --steps 2 --count 2 --seed 7 --output "$tmp/a.png" >/dev/null || fail "a.png"
"$cli" generate --model "$fixtures/plain" --scheduler ddim --steps 2 --count 2 --seed 7 --threads 1 --output "$tmp/b.png" >/dev/null || fail "b.png"
cmp -s "$tmp/a.png" "$tmp/b.png" || fail "same seed gave different images"

# errors: one line, non-zero exit
expect_error() {  # expected-text, args...
    local want="$1"; shift
    "$cli" "$@" >"$tmp/out.txt" 2>"$tmp/err.txt"
    local st=$?
    [ "$st" -ne 0 ] || fail "'$*' exited 0"
    grep -q -- "$want" "$tmp/err.txt" || fail "'$*' stderr lacks '$want': $(cat "$tmp/err.txt")"
}
expect_error "does not exist" generate --model /nonexistent/model
expect_error "unconditional" generate --model "$fixtures/plain" --guidance 3 --steps 2
expect_error "not class-conditional" generate --model "$fixtures/plain" --class 3
expect_error "is not a label" generate --model "$fixtures/class_cond_null" --class 11
expect_error "unknown scheduler" generate --model "$fixtures/plain" --scheduler k_dpm_2
expect_error "count" generate --model "$fixtures/plain" --count 0
expect_error "cannot write" generate --model "$fixtures/plain" --steps 1 --scheduler ddim --output /nonexistent/dir/x.png
[ "$(wc -l <"$tmp/err.txt")" -eq 1 ] || fail "error is not one line: $(cat "$tmp/err.txt")"

# img2img (--init): PNGs written by python's zlib (dynamic, fixed and stored deflate; all five row
# filters; split IDATs; an ancillary chunk), in every 8-bit color type, decoded by our own inflate.
cat >"$tmp/pngs.py" <<'PY'
import struct, zlib

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

def filtered(rows, bpp):
    """Row y uses filter y % 5: none, sub, up, average, paeth."""
    out, prev = b"", bytes(len(rows[0]))
    for y, row in enumerate(rows):
        f, line = y % 5, bytearray([y % 5])
        for i, x in enumerate(row):
            a, b, c = row[i - bpp] if i >= bpp else 0, prev[i], prev[i - bpp] if i >= bpp else 0
            line.append((x - [0, a, b, (a + b) // 2, paeth(a, b, c)][f]) & 255)
        out, prev = out + bytes(line), row
    return out

def png(path, pixels, color, depth=8, interlace=0, palette=None, level=9, strategy=zlib.Z_DEFAULT_STRATEGY, raw=None):
    """pixels: rows of tuples (one per pixel, the color type's samples)."""
    h, w, bpp = len(pixels), len(pixels[0]), len(pixels[0][0]) * depth // 8
    rows = [bytes(v for p in r for v in p) if depth == 8 else b"".join(struct.pack(">H", v * 257) for p in r for v in p) for r in pixels]
    co = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    z = co.compress(raw if raw is not None else filtered(rows, bpp)) + co.flush()
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace))
    data += chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped")
    if palette is not None:
        data += chunk(b"PLTE", b"".join(bytes(c) for c in palette))
    half = len(z) // 2
    data += chunk(b"IDAT", z[:half]) + chunk(b"IDAT", z[half:]) + chunk(b"IEND", b"")
    open(path, "wb").write(data)
    return z

def read_rgb(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG with filter 0 rows (ours)."""
    data, pos, chunks = open(path, "rb").read(), 8, {}
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks[kind] = chunks.get(kind, b"") + data[pos + 8:pos + 8 + n]
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(chunks[b"IDAT"])
    assert all(raw[y * (3 * w + 1)] == 0 for y in range(h))
    return w, h, [raw[y * (3 * w + 1) + 1:(y + 1) * (3 * w + 1)] for y in range(h)]

def image(w, h):
    """RGB with at most 256 colors (so it fits a palette)."""
    return [[((x * 16 + y * 3) % 256, (y * 16 + x * x) % 256, (x * y * 7 + 40) % 256) for x in range(w)] for y in range(h)]

def pil_l(r, g, b):
    """PIL's convert("L"): ITU-R 601-2 in 16-bit fixed point (libImaging/Convert.c, L24 >> 16)."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
PY
(cd "$tmp" && python3 - <<'PY') || fail "writing the img2img test PNGs"
import zlib
from pngs import *
img = image(16, 16)
z = png("rgb.png", img, 2)
assert (z[2] >> 1) & 3 == 2, "level 9 did not give a dynamic Huffman block"
assert (png("rgb_fixed.png", img, 2, strategy=zlib.Z_FIXED)[2] >> 1) & 3 == 1
assert (png("rgb_stored.png", img, 2, level=0)[2] >> 1) & 3 == 0
png("rgba.png", [[p + ((x * 37) % 256,) for x, p in enumerate(r)] for r in img], 6)
colors = sorted({p for r in img for p in r})
png("palette.png", [[(colors.index(p),) for p in r] for r in img], 3, palette=colors)
png("gray.png", [[(p[1],) for p in r] for r in img], 0)
png("gray_alpha.png", [[(p[1], 99) for p in r] for r in img], 4)
png("gray_rgb.png", [[(p[1],) * 3 for p in r] for r in img], 2)
png("wide.png", image(16, 8), 2)
# Colors where PIL's fixed-point L differs from (299 R + 587 G + 114 B + 500) // 1000: pins the rounding.
odd = [(r, g, b) for r in range(256) for g in range(0, 256, 5) for b in range(0, 256, 5)
       if pil_l(r, g, b) != (r * 299 + g * 587 + b * 114 + 500) // 1000][:256]
assert len(odd) == 256
odd = [odd[y * 16:(y + 1) * 16] for y in range(16)]
png("odd_rgb.png", odd, 2)
png("odd_l.png", [[(pil_l(*p),) for p in r] for r in odd], 0)
# Bad files
png("small.png", image(8, 8), 2)
data = open("rgb.png", "rb").read()
open("truncated.png", "wb").write(data[:len(data) - 40])
idat = data.index(b"IDAT")
open("crc.png", "wb").write(data[:idat + 6] + bytes([data[idat + 6] ^ 1]) + data[idat + 7:])
png("16bit.png", img, 2, depth=16)
png("interlaced.png", img, 2, interlace=1)
open("not.png", "w").write("GIF89a, not a PNG\n")
png("filter5.png", img, 2, raw=b"".join(bytes([5]) + bytes(48) for _ in range(16)))
png("index.png", [[(min(x + y, 20),) for x in range(16)] for y in range(16)], 3, palette=colors[:20])
png("no_plte.png", [[(0,)] * 16] * 16, 3)
PY
run_init() {  # output, init, extra args...
    local out="$1" init="$2"; shift 2
    "$cli" generate --model "$fixtures/plain" --scheduler ddim --steps 10 --init "$tmp/$init" --strength 0.5 \
        --count 2 --seed 3 --output "$tmp/$out" "$@" >"$tmp/out.txt" || fail "img2img from $init exited $?"
}
run_init i_rgb.png rgb.png
grep -q "(2 images, .* 5 steps from $tmp/rgb.png at strength 0.5" "$tmp/out.txt" || fail "img2img summary: $(cat "$tmp/out.txt")"
for f in rgb_fixed rgb_stored rgba palette; do
    run_init "i_$f.png" "$f.png"
    cmp -s "$tmp/i_rgb.png" "$tmp/i_$f.png" || fail "img2img from $f.png differs from the RGB PNG's"
done
run_init i_gray.png gray.png
cmp -s "$tmp/i_rgb.png" "$tmp/i_gray.png" && fail "img2img ignores the init image (gray and RGB gave the same output)"
for f in gray_alpha gray_rgb; do  # gray to a 3-channel model is replicated
    run_init "i_$f.png" "$f.png"
    cmp -s "$tmp/i_gray.png" "$tmp/i_$f.png" || fail "img2img from $f.png differs from the gray PNG's"
done
# A 1-channel model: RGB becomes PIL's convert("L")
for f in odd_rgb odd_l; do
    run_init "i_$f.png" "$f.png" --model "$fixtures/in1_out1"
done
cmp -s "$tmp/i_odd_rgb.png" "$tmp/i_odd_l.png" || fail "RGB to gray is not PIL's convert(\"L\")"
# height x width: the attn_one_head fixture makes 8-tall, 16-wide images
run_init i_wide.png wide.png --model "$fixtures/attn_one_head"
# Decoded pixels: one DDIM step at the lowest noise level (strength 1/1000) returns the image within a few levels.
"$cli" generate --model "$fixtures/plain" --scheduler ddim --steps 1000 --strength 0.001 --init "$tmp/rgb.png" \
    --count 1 --scale 1 --output "$tmp/near.png" >"$tmp/out.txt" || fail "near-identity img2img exited $?"
(cd "$tmp" && python3 - <<'PY') || fail "near-identity img2img is not the init image"
from pngs import *
w, h, rows = read_rgb("near.png")
img = image(16, 16)
worst = max(abs(rows[2 + y][3 * (2 + x) + c] - img[y][x][c]) for y in range(16) for x in range(16) for c in range(3))
assert worst <= 12, worst
PY
# Round trip: our encoder's PNG (stored deflate, filter 0; a 16x16 image in a 2-pixel frame) and
# python's re-encoding of the same pixels (dynamic deflate, all filters) start a 20x20 copy of the
# plain model identically.
mkdir -p "$tmp/plain20"
ln -s "$fixtures/plain/diffusion_pytorch_model.safetensors" "$tmp/plain20/"
sed 's/"sample_size": 16/"sample_size": 20/' "$fixtures/plain/config.json" >"$tmp/plain20/config.json"
"$cli" generate --model "$fixtures/plain" --scheduler ddim --steps 3 --count 1 --scale 1 --seed 5 --output "$tmp/ours.png" >/dev/null || fail "ours.png"
(cd "$tmp" && python3 - <<'PY') || fail "re-encoding ours.png"
from pngs import *
w, h, rows = read_rgb("ours.png")
assert (w, h) == (20, 20)
png("theirs.png", [[tuple(r[3 * x:3 * x + 3]) for x in range(w)] for r in rows], 2)
PY
for f in ours theirs; do
    "$cli" generate --model "$tmp/plain20" --scheduler ddim --steps 10 --init "$tmp/$f.png" --strength 0.7 --count 1 \
        --output "$tmp/i_$f.png" >/dev/null || fail "img2img from $f.png"
done
cmp -s "$tmp/i_ours.png" "$tmp/i_theirs.png" || fail "our PNG and python's with the same pixels start differently"

# Bad init images: one line on stderr naming the problem, exit status 1.
expect_init_error() {  # expected-text, file, extra args...
    local want="$1" file="$2"; shift 2
    "$cli" generate --model "$fixtures/plain" --steps 2 --scheduler ddim --init "$tmp/$file" --output "$tmp/x.png" "$@" \
        >"$tmp/out.txt" 2>"$tmp/err.txt"
    local st=$?
    [ "$st" -eq 1 ] || fail "--init $file exited $st, not 1"
    grep -q -- "$want" "$tmp/err.txt" || fail "--init $file: stderr lacks '$want': $(cat "$tmp/err.txt")"
    [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] || fail "--init $file: error is not one line: $(cat "$tmp/err.txt")"
}
expect_init_error "is 8x8 but the model makes 16x16" small.png
expect_init_error "truncated" truncated.png
expect_init_error "CRC mismatch in the IDAT chunk" crc.png
expect_init_error "bit depth 16 is not supported" 16bit.png
expect_init_error "Adam7" interlaced.png
expect_init_error "not a PNG file" not.png
expect_init_error "unknown filter type 5" filter5.png
expect_init_error "palette index 20 out of range" index.png
expect_init_error "without a PLTE chunk" no_plte.png
expect_init_error "cannot read" missing.png
expect_init_error "is 16x16 but the model makes 16x8" rgb.png --model "$fixtures/attn_one_head"
expect_error "strength" generate --model "$fixtures/plain" --init "$tmp/rgb.png" --strength 0
expect_error "strength" generate --model "$fixtures/plain" --init "$tmp/rgb.png" --strength 1.5
expect_error "needs --init" generate --model "$fixtures/plain" --strength 0.5

# Seeded fuzz: damaged PNGs (truncated, bytes changed, chunk bodies changed with the CRC fixed) never crash.
python3 - "$cli" "$fixtures/plain" "$tmp" <<'PY' || fail "PNG fuzz"
import os, random, struct, subprocess, sys
sys.path.insert(0, sys.argv[3])
from pngs import chunk
fuzz = os.path.join(sys.argv[3], "fuzz.png")
seeds = [open(os.path.join(sys.argv[3], f), "rb").read() for f in ("rgb.png", "rgb_fixed.png", "rgb_stored.png", "rgba.png", "palette.png", "gray_alpha.png")]
rng = random.Random(1)
for case in range(200):
    data = bytearray(rng.choice(seeds))
    kind = case % 3
    if kind == 0:
        data = data[:rng.randrange(len(data))]
    elif kind == 1:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    else:
        pos, chunks = 8, []
        while pos < len(data):
            n, k = struct.unpack(">I4s", data[pos:pos + 8])
            chunks.append([k, bytearray(data[pos + 8:pos + 8 + n])])
            pos += 12 + n
        body = rng.choice([c for c in chunks if c[1]])[1]
        body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        data = b"\x89PNG\r\n\x1a\n" + b"".join(chunk(k, bytes(b)) for k, b in chunks)
    open(fuzz, "wb").write(data)
    r = subprocess.run([sys.argv[1], "generate", "--model", sys.argv[2], "--scheduler", "ddim", "--steps", "1",
                        "--count", "1", "--init", fuzz, "--strength", "1", "--output", "/dev/null"],
                       capture_output=True, text=True)
    ok = r.returncode == 0 or (r.returncode == 1 and r.stderr.count("\n") == 1 and "fuzz.png" in r.stderr)
    assert ok, (case, r.returncode, r.stderr[-500:])
PY

# Stable Diffusion: info lists the components; a prompt run gives diffusers' image (the fixture's
# pndm run: seed 0, 8 steps, guidance 7.5); img2img and inpainting from PNGs; one-line errors.
sd="$(cd "$(dirname "$0")/../Fixtures/sd" && pwd)"
out="$("$cli" info --model "$sd/sd1")" || fail "sd info exited $?"
for word in UNet2DConditionModel CLIPTextModel AutoencoderKL tokenizer; do
    grep -q "$word" <<<"$out" || fail "sd info does not list $word: $out"
done
"$cli" generate --model "$sd/sd1" --prompt "a photo of a cat" --steps 8 --seed 0 --width 64 --height 64 \
    --output "$tmp/sd.png" >"$tmp/out.txt" 2>"$tmp/err.txt" || fail "sd generate exited $?: $(cat "$tmp/err.txt")"
grep -q "wrote $tmp/sd.png (1 images" "$tmp/out.txt" || fail "sd generate summary: $(cat "$tmp/out.txt")"
python3 - "$tmp" "$sd/refs/sd1/runs/txt2img_pndm.safetensors" <<'PY' || fail "the CLI's SD image differs from diffusers'"
import json, struct, sys, zlib
def read_png(path):
    data = open(path, "rb").read()
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR": ihdr = struct.unpack(">IIBB", data[pos + 8:pos + 18])
        if kind == b"IDAT": idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    w, h, depth, color = ihdr
    assert depth == 8 and color == 2
    raw, rows, stride = zlib.decompress(idat), [], 3 * w
    for y in range(h):
        assert raw[y * (stride + 1)] == 0  # our encoder writes filter 0
        rows.append(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    return w, h, rows
w, h, rows = read_png(sys.argv[1] + "/sd.png")
assert (w, h) == (64 + 4, 64 + 4), (w, h)
data = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
head = json.loads(data[8:8 + n])
lo, hi = head["image"]["data_offsets"]
ref = data[8 + n + lo:8 + n + hi]  # uint8 [1, 64, 64, 3]
worst = max(abs(rows[2 + y][(2 + x) * 3 + c] - ref[(y * 64 + x) * 3 + c]) for y in range(64) for x in range(64) for c in range(3))
assert worst <= 1, worst
PY
python3 - "$tmp" <<'PY'
import struct, sys, zlib
def png(path, rows, color):
    def chunk(k, b): return struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))
    ch = 3 if color == 2 else 1
    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, color, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
png(sys.argv[1] + "/init.png", [[(x * 4 + y * 2 + c * 50) % 256 for x in range(64) for c in range(3)] for y in range(64)], 2)
png(sys.argv[1] + "/mask.png", [[255 if 16 <= x < 48 and 16 <= y < 48 else 0 for x in range(64)] for y in range(64)], 0)
PY
"$cli" generate --model "$sd/sd1" --prompt "a cat" --init "$tmp/init.png" --strength 0.5 --steps 4 \
    --output "$tmp/i2i.png" >"$tmp/out.txt" 2>&1 || fail "sd img2img exited $?: $(cat "$tmp/out.txt")"
grep -q "from $tmp/init.png at strength 0.5" "$tmp/out.txt" || fail "sd img2img summary: $(cat "$tmp/out.txt")"
"$cli" generate --model "$sd/sd1_inpaint" --prompt "a cat" --init "$tmp/init.png" --mask "$tmp/mask.png" --steps 4 \
    --output "$tmp/inpaint.png" >"$tmp/out.txt" 2>&1 || fail "sd inpaint exited $?: $(cat "$tmp/out.txt")"
"$cli" generate --model "$sd/sd1" --prompt "a cat" --width 60 --output "$tmp/x.png" >/dev/null 2>"$tmp/err.txt"
[ $? -eq 1 ] && [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] && grep -q "multiples of 8" "$tmp/err.txt" || fail "sd --width 60: $(cat "$tmp/err.txt")"
"$cli" generate --model "$fixtures/plain" --prompt "a cat" --output "$tmp/x.png" >/dev/null 2>"$tmp/err.txt"
[ $? -eq 1 ] && grep -q "not a text-to-image pipeline" "$tmp/err.txt" || fail "--prompt on a pixel model: $(cat "$tmp/err.txt")"
"$cli" generate --model "$sd/sd1" --prompt "a cat" --mask "$tmp/mask.png" --output "$tmp/x.png" >/dev/null 2>"$tmp/err.txt"
[ $? -eq 64 ] || fail "--mask without --init: $(cat "$tmp/err.txt")"

# A single-file checkpoint (the tiny sd1 pipeline in the original layout) with --config-from and --vae.
python3 "$(dirname "$0")/../../tools/single_file_layout.py" "$sd/sd1" "$tmp/sd1.safetensors" --kind sd1 >/dev/null \
    && python3 "$(dirname "$0")/../../tools/single_file_layout.py" "$sd/sd1" "$tmp/vae.safetensors" --kind vae >/dev/null \
    || fail "tools/single_file_layout.py failed"
"$cli" generate --model "$sd/sd1" --prompt "a cat" --steps 2 --seed 3 --output "$tmp/folder.png" >/dev/null 2>&1 || fail "sd1 generate exited $?"
"$cli" generate --model "$tmp/sd1.safetensors" --config-from "$sd/sd1" --vae "$tmp/vae.safetensors" --prompt "a cat" \
    --steps 2 --seed 3 --output "$tmp/file.png" >/dev/null 2>&1 || fail "single-file generate exited $?"
cmp -s "$tmp/folder.png" "$tmp/file.png" || fail "the single file's image differs from the folder's"
"$cli" info --model "$tmp/sd1.safetensors" >/dev/null 2>"$tmp/err.txt"
[ $? -eq 1 ] && [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] && grep -q "config_from" "$tmp/err.txt" || fail "single file without --config-from: $(cat "$tmp/err.txt")"

# Threads default to the CPUs the process may use (its affinity mask), not every online CPU.
if command -v taskset >/dev/null; then
    out="$(taskset -c 0 "$cli" info --model "$fixtures/plain")" || fail "info under taskset exited $?"
    grep -q "^threads:     1$" <<<"$out" || fail "info under taskset -c 0 does not report 1 thread: $out"
    out="$("$cli" info --model "$fixtures/plain" --threads 3)" || fail "info --threads 3 exited $?"
    grep -q "^threads:     3$" <<<"$out" || fail "info --threads 3: $out"
else
    echo "taskset missing (util-linux): the affinity check needs it" >&2; exit 1
fi

# --precision and --memory-limit
out="$("$cli" info --model "$fixtures/plain" --precision bf16)" || fail "info --precision bf16 exited $?"
grep -q "^precision:   bf16" <<<"$out" || fail "info does not report bf16: $out"
"$cli" info --model "$fixtures/plain" --precision fp8 >/dev/null 2>"$tmp/err.txt"
[ $? -eq 64 ] && grep -q "precision" "$tmp/err.txt" || fail "--precision fp8: $(cat "$tmp/err.txt")"
"$cli" generate --model "$fixtures/plain" --precision bf16 --steps 2 --output "$tmp/bf16.png" >/dev/null 2>&1 \
    || fail "generate --precision bf16 exited $?"
"$cli" info --model "$fixtures/plain" --memory-limit 1K >/dev/null 2>"$tmp/err.txt"
[ $? -eq 1 ] && [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] && grep -q "memory_limit" "$tmp/err.txt" \
    || fail "--memory-limit 1K: $(cat "$tmp/err.txt")"
"$cli" info --model "$fixtures/plain" --memory-limit 1G >/dev/null || fail "--memory-limit 1G exited $?"
for bad in 0 -5 12X 99999999999999999999G; do
    "$cli" info --model "$fixtures/plain" --memory-limit "$bad" >/dev/null 2>"$tmp/err.txt"
    [ $? -eq 64 ] || fail "--memory-limit $bad was accepted: $(cat "$tmp/err.txt")"
done

if [ "$failures" -eq 0 ]; then echo "test_cli: ok"; else echo "test_cli: $failures failed"; exit 1; fi
