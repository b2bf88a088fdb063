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
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT         := out
BENCH_ARGS  ?=

.PHONY: all build deps test test-swift test-c test-install test-python test-cli test-portable demo install bench bench-cifar bench-sd clean

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

test: build test-swift test-c test-install test-python test-cli test-portable
	@echo "all tests passed"

# The library built for any AVX2 + FMA CPU (MARCH=x86-64-v3, the build to ship to several
# machines) passes the C API tests too.
PORTABLE_DIR := .build-portable/release
test-portable: deps
	swift build $(RELEASE) $(call cpu_flags,x86-64-v3) --scratch-path .build-portable --product diffusion
	@ln -sf libdiffusion.so $(PORTABLE_DIR)/libdiffusion.so.$(SOVERSION)
	$(call c_test,$(PORTABLE_DIR),test_api)
	$(call c_test,$(PORTABLE_DIR),test_sd_api)

# The core's tests link the Swift runtime dynamically, so they build in their own folder;
# -enable-testing lets the kernel tests reach internal functions (attention, gemm).
test-swift: deps
	swift test -c release $(CPU_FLAGS) -Xswiftc -enable-testing --scratch-path .build-test

test-c: build
	$(PYTHON) Tests/c/check_library.py $(LIB)
	$(call c_test,$(BUILD_DIR),test_api)
	$(call c_test,$(BUILD_DIR),test_sd_api)
	$(call c_test,$(BUILD_DIR),test_steady_state)
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
