# libdiffusion — build, test, install, demo, bench.
#   make demo      build and generate images from the model shipped in models/
#   make test      build and run every test (Swift core, C API, install + pkg-config, Python)
#   make install PREFIX=/usr/local
#   make bench     speed vs PyTorch, ONNX Runtime and OpenVINO on five workloads (cifar UNet batch 1/8, a UNet
#                  at SD1.5 widths, SD1.5's UNet CFG pair and VAE decode; venv with them under bench/.venv;
#                  about an hour: see bench/README.md). BENCH_ARGS="--tiny" for a one-minute smoke run.
#   make bench-cifar  the cifar UNet only, vs PyTorch and ONNX Runtime (a few minutes)
#   make bench-sd  Stable Diffusion 1.5-shaped generation vs diffusers (load, s/step, decode, RSS)
# For a CPU older than the build machine: make MARCH=x86-64-v3 (any AVX2 + FMA CPU, same speed
# here), x86-64-v2 or x86-64 (default: native).

PREFIX      ?= /usr/local
MARCH       ?= native
VERSION     := 0.3.0
SOVERSION   := 0
PYTHON      ?= python3
DEMO_MODEL  ?= models/digits
TEST_MODEL  := Tests/Fixtures/unet/cifar_small
BUILD_DIR   := .build/release
LIB         := $(BUILD_DIR)/libdiffusion.so
# Swift's -target-cpu takes CPU names, not the x86-64-vN levels: the nearest CPU of each level.
swift_cpu    = $(or $(if $(filter x86-64-v2,$(1)),nehalem),$(if $(filter x86-64-v3,$(1)),haswell),$(if $(filter x86-64-v4,$(1)),skylake-avx512),$(1))
cpu_flags    = -Xcc -march=$(1) -Xswiftc -target-cpu -Xswiftc $(call swift_cpu,$(1))
CPU_FLAGS   := $(call cpu_flags,$(MARCH))
RELEASE     := -c release --static-swift-stdlib -Xswiftc -static-stdlib
SWIFT_FLAGS := $(RELEASE) $(CPU_FLAGS)
# $(call c_test,LIBDIR,NAME): build Tests/c/NAME.c against LIBDIR's libdiffusion and run it.
c_test       = cc -std=c11 -Wall -Wextra -Werror -Iinclude Tests/c/$(2).c -L$(1) -ldiffusion -lm -Wl,-rpath,$(abspath $(1)) \
	  -o $(1)/$(2) && $(1)/$(2) Tests/Fixtures
, := ,
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT         := out
BENCH_ARGS  ?=

.PHONY: all build deps test test-swift test-c test-install test-python test-cli test-portable test-fuzz-inputs fuzz sanitize sanitize-asan sanitize-asan-c sanitize-tsan demo install bench bench-cifar bench-sd clean

all: build

# System packages: pkg-config (test-install builds the C example with it).
deps:
	@missing=""; \
	for p in pkg-config; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The library and the `diffusion` command-line program (product diffusion-cli).
build: deps
	swift build $(SWIFT_FLAGS)
	@ln -sf libdiffusion.so $(BUILD_DIR)/libdiffusion.so.$(SOVERSION)
	@ln -sf diffusion-cli $(BUILD_DIR)/diffusion

test: build test-swift test-c test-fuzz-inputs test-install test-python test-cli test-portable
	@echo "all tests passed"

# The library built for any AVX2 + FMA CPU (MARCH=x86-64-v3, the build to ship to several
# machines) passes the C API tests too.
PORTABLE_DIR := .build-portable/release
test-portable: deps
	swift build $(RELEASE) $(call cpu_flags,x86-64-v3) --scratch-path .build-portable --product diffusion
	@ln -sf libdiffusion.so $(PORTABLE_DIR)/libdiffusion.so.$(SOVERSION)
	$(call c_test,$(PORTABLE_DIR),test_api)
	$(call c_test,$(PORTABLE_DIR),test_sd_api)

# Sanitizers (issue 10). The library is built with Swift's AddressSanitizer (and clang's
# ASan + UndefinedBehaviorSanitizer for its C shim; Swift has no UBSan, it traps on overflow and
# bounds itself), or with ThreadSanitizer; the test programs with the same sanitizer, whose
# runtime they carry. No suppressions. `make sanitize` runs both; CI runs sanitize-asan-c.
#   sanitize-asan: the C API tests, then the Python suite with the ASan runtime preloaded
#                  (leak checking off there: CPython does not free everything at exit).
#   sanitize-tsan: the C API tests: cancel racing free, two threads on one sampler, many
#                  samplers on one model, cancel during each stage.
ASAN_DIR    := .build-asan/release
TSAN_DIR    := .build-tsan/release
SWIFT_LIB   := $(shell dirname $$(dirname $$(readlink -f $$(which swiftc))))/lib/swift/linux
# $(call san_build,DIR,SWIFT_SANITIZER,C_SANITIZERS)
san_build    = swift build $(SWIFT_FLAGS) --scratch-path $(dir $(1)) --product diffusion \
	  -Xswiftc -sanitize=$(2) -Xcc -fsanitize=$(3) && ln -sf libdiffusion.so $(1)/libdiffusion.so.$(SOVERSION)
# $(call san_test,DIR,C_SANITIZERS,NAME,EXTRA_LIBS)
san_test     = clang -std=c11 -g -fno-omit-frame-pointer -fuse-ld=lld -fsanitize=$(2) -Iinclude Tests/c/$(3).c -L$(1) -ldiffusion \
	  -lm -lpthread $(4) -Wl,-rpath,$(abspath $(1)) -o $(1)/$(3) && $(SAN_ENV) $(1)/$(3) Tests/Fixtures
SAN_ENV      = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 TSAN_OPTIONS=halt_on_error=1

sanitize: sanitize-asan sanitize-tsan
	@echo "sanitizers: clean"

sanitize-asan-c: deps
	$(call san_build,$(ASAN_DIR),address,address$(,)undefined)
	$(call san_test,$(ASAN_DIR),address$(,)undefined,test_api)
	$(call san_test,$(ASAN_DIR),address$(,)undefined,test_sd_api)

sanitize-asan: sanitize-asan-c
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 LD_PRELOAD=$$(clang -print-file-name=libclang_rt.asan-x86_64.so) \
	  DIFFUSION_LIBRARY=$(abspath $(ASAN_DIR))/libdiffusion.so PYTHONPATH=bindings/python $(PYTHON) -m pytest -q bindings/python/tests

sanitize-tsan: deps
	$(call san_build,$(TSAN_DIR),thread,thread)
	$(call san_test,$(TSAN_DIR),thread,test_api,-L$(SWIFT_LIB) -ldispatch -lBlocksRuntime -Wl$(,)-rpath$(,)$(SWIFT_LIB))
	$(call san_test,$(TSAN_DIR),thread,test_sd_api,-L$(SWIFT_LIB) -ldispatch -lBlocksRuntime -Wl$(,)-rpath$(,)$(SWIFT_LIB))

# Fuzzing (issue 10): libFuzzer over the C API, one target per parser (Tests/fuzz/fuzz_targets.c).
# The library is built with ASan and edge coverage into .build-fuzz/; each target runs
# FUZZ_SECONDS over its seed corpus (Tests/fuzz/corpus/<target>, from tools/make_fuzz_corpus.py)
# and a working corpus kept in .build-fuzz/corpus/<target>. A finding is written to
# .build-fuzz/findings/<target>-*: fix it and add the input to Tests/fuzz/regressions/<target>/,
# which `make test` replays (test-fuzz-inputs) with the seed corpus.
FUZZ_TARGETS := safetensors unet_config scheduler_config pipeline_config tokenizer prompt single_file
FUZZ_SECONDS ?= 60
FUZZ_DIR     := .build-fuzz/release
# The CLI's PNG decoder is Swift outside the library: its two files build alone with a stand-in
# for the one DiffusionCore type they use (Tests/fuzz/png_harness.swift). $(call png_fuzzer,OUT,SANITIZERS)
png_fuzzer   = mkdir -p $(dir $(1))png && sed '/^import DiffusionCore$$/d' Sources/DiffusionCLI/PNGDecoder.swift > $(dir $(1))png/PNGDecoder.swift && \
	  swiftc -O -sanitize=$(2) -use-ld=lld -parse-as-library $(dir $(1))png/PNGDecoder.swift Sources/DiffusionCLI/PNG.swift \
	  Tests/fuzz/png_harness.swift -o $(1)
fuzz: deps
	$(call san_build,$(FUZZ_DIR),address -Xswiftc -sanitize-coverage=edge$(,)inline-8bit-counters$(,)pc-table$(,)trace-cmp,address$(,)fuzzer-no-link)
	@mkdir -p .build-fuzz/findings
	@for t in $(FUZZ_TARGETS); do \
	  clang -std=c11 -g -O1 -fuse-ld=lld -fsanitize=fuzzer,address -DFUZZ_TARGET=TARGET_$$t -Iinclude Tests/fuzz/fuzz_targets.c \
	    -L$(FUZZ_DIR) -ldiffusion -lm -lpthread -Wl,-rpath,$(abspath $(FUZZ_DIR)) -o $(FUZZ_DIR)/fuzz_$$t || exit 1; \
	  mkdir -p .build-fuzz/corpus/$$t; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s"; \
	  $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=6144 -print_final_stats=1 \
	    -artifact_prefix=.build-fuzz/findings/$$t- .build-fuzz/corpus/$$t Tests/fuzz/corpus/$$t > .build-fuzz/$$t.log 2>&1; \
	  st=$$?; grep -E "^#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY" .build-fuzz/$$t.log | tail -6; \
	  [ $$st = 0 ] || { echo "fuzz $$t: finding, see .build-fuzz/$$t.log and .build-fuzz/findings/"; exit 1; }; \
	done
	$(call png_fuzzer,$(FUZZ_DIR)/fuzz_png,fuzzer$(,)address)
	@mkdir -p .build-fuzz/corpus/png; echo "fuzz png: $(FUZZ_SECONDS) s"; \
	$(FUZZ_DIR)/fuzz_png -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=6144 -print_final_stats=1 \
	  -artifact_prefix=.build-fuzz/findings/png- .build-fuzz/corpus/png Tests/fuzz/corpus/png > .build-fuzz/png.log 2>&1; \
	st=$$?; grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|ERROR|SUMMARY" .build-fuzz/png.log | tail -4; \
	[ $$st = 0 ] || { echo "fuzz png: finding, see .build-fuzz/png.log and .build-fuzz/findings/"; exit 1; }

# Every fuzz target's seed corpus and past findings, replayed against the plain library.
test-fuzz-inputs: build
	@for t in $(FUZZ_TARGETS); do \
	  cc -std=c11 -Wall -Wextra -Werror -DFUZZ_TARGET=TARGET_$$t -Iinclude Tests/fuzz/fuzz_targets.c Tests/fuzz/fuzz_main.c \
	    -L$(BUILD_DIR) -ldiffusion -lm -Wl,-rpath,$(abspath $(BUILD_DIR)) -o $(BUILD_DIR)/replay_$$t || exit 1; \
	  inputs=Tests/fuzz/corpus/$$t; [ -d Tests/fuzz/regressions/$$t ] && inputs="$$inputs Tests/fuzz/regressions/$$t"; \
	  $(BUILD_DIR)/replay_$$t $$inputs || exit 1; \
	done
	@$(call png_fuzzer,$(BUILD_DIR)/replay_png,fuzzer)
	@inputs=$$(ls -d Tests/fuzz/corpus/png/*); [ -d Tests/fuzz/regressions/png ] && inputs="$$inputs $$(ls -d Tests/fuzz/regressions/png/*)"; \
	$(BUILD_DIR)/replay_png $$inputs > $(BUILD_DIR)/replay_png.log 2>&1 || { cat $(BUILD_DIR)/replay_png.log; exit 1; }; \
	echo "$(BUILD_DIR)/replay_png: $$(echo $$inputs | wc -w) inputs replayed, no crash"

# The core's tests link the Swift runtime dynamically, so they build in their own folder;
# -enable-testing lets the kernel tests reach internal functions (attention, gemm).
test-swift: deps
	swift test -c release $(CPU_FLAGS) -Xswiftc -enable-testing --scratch-path .build-test

test-c: build
	$(PYTHON) Tests/c/check_library.py $(LIB)
	$(call c_test,$(BUILD_DIR),test_api)
	$(call c_test,$(BUILD_DIR),test_sd_api)
	$(call c_test,$(BUILD_DIR),test_steady_state)
	$(call c_test,$(BUILD_DIR),test_soak)
	cc -std=c11 -Wall -Wextra -Werror -march=$(MARCH) -ISources/CDiffusion/include Tests/c/test_cpu_check.c Sources/CDiffusion/shim.c -lpthread -o $(BUILD_DIR)/test_cpu_check
	$(BUILD_DIR)/test_cpu_check
	cc -std=c11 -Wall -Wextra -Werror -march=$(MARCH) -mavx512f -mavx512bw -mavx512vl -DWANT_AVX512 -ISources/CDiffusion/include Tests/c/test_cpu_check.c Sources/CDiffusion/shim.c -lpthread -o $(BUILD_DIR)/test_cpu_check_avx512
	$(BUILD_DIR)/test_cpu_check_avx512

# Install into a temporary prefix, then build and run the C example with pkg-config only.
test-install: build
	@tmp=$$(mktemp -d); \
	$(MAKE) --no-print-directory install PREFIX=$$tmp >/dev/null && \
	PKG_CONFIG_PATH=$$tmp/lib/pkgconfig cc -std=c11 -Wall -Werror examples/c/generate.c \
	  $$(PKG_CONFIG_PATH=$$tmp/lib/pkgconfig pkg-config --cflags --libs diffusion) -lz -o $$tmp/generate && \
	LD_LIBRARY_PATH=$$tmp/lib $$tmp/generate --model $(TEST_MODEL) --steps 10 --output $$tmp/c.png && \
	LD_LIBRARY_PATH=$$tmp/lib $$tmp/generate --model Tests/Fixtures/sd/sd1 --steps 4 --prompt "a photo of a cat" \
	  --guidance 7.5 --count 2 --output $$tmp/sd.png && test -s $$tmp/sd.png && \
	PKG_CONFIG_PATH=$$tmp/lib/pkgconfig cc -std=c11 -Wall -Werror examples/c/own_denoiser.c \
	  $$(PKG_CONFIG_PATH=$$tmp/lib/pkgconfig pkg-config --cflags --libs diffusion) -lm -o $$tmp/own_denoiser && \
	for s in ddpm:100 ddim:50 euler:30 euler_a:30 heun:15 dpmpp_2m:20 pndm:20 lms:30 unipc:10 lcm:4; do \
	  out=$$(LD_LIBRARY_PATH=$$tmp/lib $$tmp/own_denoiser $${s%%:*} $${s##*:}) || { echo "$$out"; exit 1; }; \
	  echo "$$out" | head -1; \
	done && \
	$$tmp/bin/diffusion info --model $(TEST_MODEL) >/dev/null && \
	test -s $$tmp/c.png && echo "install + pkg-config + C example: ok ($$tmp)"; \
	st=$$?; rm -rf $$tmp; exit $$st

test-python: build
	DIFFUSION_LIBRARY=$(abspath $(LIB)) PYTHONPATH=bindings/python $(PYTHON) -m pytest -q bindings/python/tests
	@tmp=$$(mktemp -d); \
	DIFFUSION_LIBRARY=$(abspath $(LIB)) PYTHONPATH=bindings/python $(PYTHON) examples/python/generate.py \
	  --model $(TEST_MODEL) --steps 10 --output $$tmp/py.png && test -s $$tmp/py.png; st=$$?; rm -rf $$tmp; exit $$st

test-cli: build
	bash Tests/cli/test_cli.sh $(BUILD_DIR)/diffusion

# All ten digits, a row per class, with classifier-free guidance.
demo: build
	@mkdir -p $(OUT)
	$(BUILD_DIR)/diffusion generate --model $(DEMO_MODEL) --class all --count 10 --guidance 3 \
	  --scheduler ddim --steps 50 --seed 1 --output $(OUT)/digits.png
	@echo "demo image: $(abspath $(OUT)/digits.png)"

install: build
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
	  $(DESTDIR)$(PREFIX)/share/diffusion/models
	install -m 755 $(BUILD_DIR)/diffusion-cli $(DESTDIR)$(PREFIX)/bin/diffusion
	if [ -d models/digits ]; then cp -R models/digits $(DESTDIR)$(PREFIX)/share/diffusion/models/; fi
	install -m 755 $(LIB) $(DESTDIR)$(PREFIX)/lib/libdiffusion.so.$(VERSION)
	ln -sf libdiffusion.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libdiffusion.so.$(SOVERSION)
	ln -sf libdiffusion.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libdiffusion.so
	install -m 644 include/diffusion.h $(DESTDIR)$(PREFIX)/include/diffusion.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' diffusion.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/diffusion.pc

# Every engine on the five workloads of bench/bench_engines.py (models made and exported on first use
# into bench/.models/; the SD1.5-shaped pipeline is shared with bench-sd).
bench: build
	bash bench/run.sh --engines-bench $(BENCH_ARGS)

# The cifar UNet alone (bench/bench_unet.py): libdiffusion vs PyTorch vs ONNX Runtime, batch 1 and 8.
bench-cifar: build
	bash bench/run.sh $(BENCH_ARGS)

# Stable Diffusion 1.5-shaped generation vs diffusers (random F16 weights, ~2 GB, made on first use).
SD_BENCH_MODEL ?= bench/.models/sd15-random
bench-sd: build
	BENCH_SETUP_ONLY=1 bash bench/run.sh
	@v=$${BENCH_VENV:-bench/.venv}; \
	$$v/bin/python -c "import transformers" 2>/dev/null || $$v/bin/pip install --quiet transformers; \
	[ -f $(SD_BENCH_MODEL)/model_index.json ] || $$v/bin/python tools/make_sd15_random.py --out $(SD_BENCH_MODEL); \
	DIFFUSION_LIBRARY=$(abspath $(LIB)) PYTHONPATH=bindings/python $$v/bin/python bench/bench_sd.py --model $(SD_BENCH_MODEL)

clean:
	rm -rf .build .build-test .build-portable $(OUT)
