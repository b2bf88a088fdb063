#!/usr/bin/env python3
"""Checks the shape of a built libdiffusion.so (python3 standard library only).

    python3 Tests/c/check_library.py .build/release/libdiffusion.so [--header include/diffusion.h]

  - `ldd LIB` lists no Swift runtime (libswift*, libFoundation*, libdispatch*): the Swift standard
    library must be linked statically so the library can ship as one file;
  - `readelf -d LIB` has SONAME libdiffusion.so.0 and the NODELETE flag (the library's worker
    threads, and Dispatch's, stay parked in its code: dlclose must not unmap it under them);
  - the GLOBAL defined dynamic symbols (`nm -D --defined-only`, uppercase types) are exactly the
    functions declared in include/diffusion.h — nothing missing, nothing extra.

Exits 0 and prints a one-line summary on success; exits 1 with one line per problem otherwise.
"""
import argparse
import os
import re
import subprocess
import sys

EXPECTED_SONAME = "libdiffusion.so.0"
FORBIDDEN_LIBS = re.compile(r"^(libswift|libFoundation|libdispatch|libBlocksRuntime)")


def run(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        sys.exit(f"check_library: FAIL: '{cmd[0]}' is not installed")
    if p.returncode != 0:
        sys.exit(f"check_library: FAIL: '{' '.join(cmd)}' exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def header_functions(path):
    """Names of the functions the header declares (prototypes, not typedefs or macros)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)   # block comments
    text = re.sub(r"//[^\n]*", " ", text)                 # line comments
    text = re.sub(r"^\s*#[^\n]*", " ", text, flags=re.M)  # preprocessor lines
    names = set()
    # Each top-level declaration ends with ';'. A prototype is `<return type> name(<params>);`;
    # a typedef of a function pointer (`typedef bool (*fn)(...)`) is excluded by its keyword.
    # Braces (enum/struct bodies, extern "C") are cut away: only the text after the last '{' or
    # '}' of a ';'-terminated chunk can be a prototype.
    for decl in text.split(";"):
        decl = " ".join(re.split(r"[{}]", decl)[-1].split())
        if not decl or decl.startswith("typedef"):
            continue
        m = re.fullmatch(r"[A-Za-z_][\w\s\*]*?\b(diffusion_\w+)\s*\((.*)\)", decl)
        if m:
            names.add(m.group(1))
    return names


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_header = os.path.normpath(os.path.join(here, "..", "..", "include", "diffusion.h"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("library")
    ap.add_argument("--header", default=default_header)
    args = ap.parse_args()

    if not os.path.isfile(args.library):
        sys.exit(f"check_library: FAIL: {args.library} does not exist (run make build)")
    problems = []

    # 1. No dynamic dependency on the Swift runtime.
    deps = []
    for line in run(["ldd", args.library]).splitlines():
        name = line.strip().split(" ", 1)[0]
        if name:
            deps.append(os.path.basename(name))
        if "not found" in line:
            problems.append(f"unresolved dependency: {line.strip()}")
    for d in deps:
        if FORBIDDEN_LIBS.match(d):
            problems.append(f"depends on {d} (the Swift runtime must be linked statically)")

    # 2. SONAME.
    dynamic = run(["readelf", "-d", args.library])
    if not re.search(r"\(FLAGS_1\)\s+Flags:.*\bNODELETE\b", dynamic):
        problems.append("no NODELETE flag (link with -z nodelete): dlclose would unmap code its threads sit in")
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", dynamic)
    soname = m.group(1) if m else None
    if soname != EXPECTED_SONAME:
        problems.append(f"SONAME is {soname!r}, expected {EXPECTED_SONAME!r}")

    # 3. Exported symbols == header functions.
    declared = header_functions(args.header)
    if not declared:
        problems.append(f"found no function prototypes in {args.header}")
    exported = set()
    for line in run(["nm", "-D", "--defined-only", args.library]).splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        kind, name = parts[-2], parts[-1]
        if len(kind) == 1 and kind.isupper():   # lowercase = local, not exported
            exported.add(name.split("@", 1)[0])
    for name in sorted(exported - declared):
        problems.append(f"exports {name}, which include/diffusion.h does not declare")
    for name in sorted(declared - exported):
        problems.append(f"does not export {name}, declared in include/diffusion.h")

    if problems:
        for p in problems:
            print(f"check_library: FAIL: {args.library}: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"check_library: ok: {args.library}: SONAME {soname}, {len(exported)} exported symbols = "
          f"{len(declared)} header functions, no Swift runtime among {len(deps)} dependencies")


if __name__ == "__main__":
    main()
