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

if [ "$failures" -eq 0 ]; then echo "test_cli: ok"; else echo "test_cli: $failures failed"; exit 1; fi
