# mcutrain: firmware for four targets, host tools, tests.
#   make setup      toolchains, emulators (apt) and the project venv (pip), pinned
#   make demo       the main job: keyword spotting adapted on the emulated Cortex-M4F to unheard voices
#   make fleet-demo federated keyword spotting over 4 emulated boards with Flower
#   make test       build everything and run the test suite
#   make fuzz       the long fuzz campaign (API calls, file mutants, power loss); a summary table
#   make firmware   unix + qemu-m4f + qemu-rv32 + qemu-rv32f firmware (also firmware-unix-san)
# MICROPY_DIR=/path/to/micropython builds against your own MicroPython checkout
# instead of the pinned Debian source.

MICROPYTHON_DEB_VERSION := 1.25.0+ds-1
MICROPYTHON_SUITE := trixie
MICROPYTHON_VERSION := $(firstword $(subst +, ,$(MICROPYTHON_DEB_VERSION)))

ROOT := $(CURDIR)
CACHE := $(ROOT)/.cache
BUILD := $(ROOT)/build
VENV := $(ROOT)/.venv
PYTHON ?= python3

ifeq ($(MICROPY_DIR),)
MICROPY_DIR := $(CACHE)/micropython-$(MICROPYTHON_VERSION)
MICROPY_SOURCE := $(MICROPY_DIR)/.fetched-$(MICROPYTHON_DEB_VERSION)
# The tarball has no git history: name the version ourselves.
export MICROPY_GIT_TAG := v$(MICROPYTHON_VERSION)
export MICROPY_GIT_HASH := debian-$(MICROPYTHON_DEB_VERSION)
else
override MICROPY_DIR := $(abspath $(MICROPY_DIR))
MICROPY_SOURCE := $(MICROPY_DIR)/py/mpconfig.h
endif

APT_PACKAGES := build-essential xz-utils gcc-arm-none-eabi libnewlib-arm-none-eabi \
	gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-arm qemu-system-misc \
	dataset-fashion-mnist espeak-ng flite cmake

MPY_CROSS := $(BUILD)/mpy-cross/mpy-cross
# Shared by every firmware build: our user module, our device packages (also
# standing in for the micropython-lib submodule that Debian's tarball leaves empty).
FIRMWARE_ARGS := USER_C_MODULES=$(ROOT)/usermod MPY_LIB_DIR=$(ROOT)/micropython_lib \
	MICROPY_MPYCROSS=$(MPY_CROSS) MICROPY_MPYCROSS_DEPENDENCY=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all setup apt-packages venv fetch firmware firmware-unix firmware-unix-san bench learning \
	firmware-qemu-m4f firmware-qemu-rv32 firmware-qemu-rv32f cycle-model test demo fleet-demo emulate fuzz students clean distclean

all: firmware

setup: apt-packages venv

apt-packages:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:" $$missing; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "error: missing Debian packages. Run:"; \
			echo "    sudo apt-get update && sudo apt-get install -y" $$missing; \
			exit 1; \
		fi; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: host/requirements.txt host/requirements-torch.txt host/requirements-fleet.txt \
		host/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r host/requirements.txt
	# PyTorch (CPU) for export tests: the exact pin takes the local CPU build; a range
	# would download several GB of CUDA wheels.
	$(VENV)/bin/pip install -q -r host/requirements-torch.txt
	# Flower for `mcutrain fleet` (federated training; see the file for its protobuf pin).
	$(VENV)/bin/pip install -q -r host/requirements-fleet.txt
	$(VENV)/bin/pip install -q --no-deps -e host
	touch $@

fetch: $(MICROPY_SOURCE)

$(CACHE)/micropython-$(MICROPYTHON_VERSION)/.fetched-$(MICROPYTHON_DEB_VERSION): tools/micropython.sha256
	tools/fetch-micropython.sh $(MICROPYTHON_DEB_VERSION) $(MICROPYTHON_SUITE) \
		tools/micropython.sha256 $(CACHE)/micropython-$(MICROPYTHON_VERSION)

$(MPY_CROSS): $(MICROPY_SOURCE)
	$(MAKE) -C $(MICROPY_DIR)/mpy-cross -j$(JOBS) BUILD=$(BUILD)/mpy-cross USER_C_MODULES=

firmware: firmware-unix firmware-qemu-m4f firmware-qemu-rv32 firmware-qemu-rv32f

firmware-unix: $(MPY_CROSS)
	$(MAKE) -C $(MICROPY_DIR)/ports/unix -j$(JOBS) $(FIRMWARE_ARGS) \
		VARIANT_DIR=$(ROOT)/boards/unix BUILD=$(BUILD)/unix

# ASan + UBSan build of the unix firmware, for kernel tests under sanitizers.
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
firmware-unix-san: $(MPY_CROSS)
	$(MAKE) -C $(MICROPY_DIR)/ports/unix -j$(JOBS) $(FIRMWARE_ARGS) \
		VARIANT_DIR=$(ROOT)/boards/unix BUILD=$(BUILD)/unix-san \
		CFLAGS_EXTRA="$(SANITIZE) -DMICROPY_STACK_CHECK_MARGIN=8192" LDFLAGS_EXTRA="$(SANITIZE)"

# A static pattern rule: make ignores plain pattern rules for .PHONY targets.
QEMU_FIRMWARE := firmware-qemu-m4f firmware-qemu-rv32 firmware-qemu-rv32f
$(QEMU_FIRMWARE): firmware-qemu-%: $(MPY_CROSS)
	$(MAKE) -C boards/qemu -j$(JOBS) $(FIRMWARE_ARGS) BOARD=$* \
		MICROPY_DIR=$(MICROPY_DIR) BUILD=$(BUILD)/qemu-$*

# The Cortex-M4 cycle model: a QEMU TCG plugin (tools/cycle-model/README.md), host gcc.
CYCLE_MODEL := $(BUILD)/cycle-model/libm4cycles.so
CYCLE_MODEL_SRC := $(wildcard tools/cycle-model/*.c tools/cycle-model/*.h)
cycle-model: $(CYCLE_MODEL)
$(CYCLE_MODEL): $(CYCLE_MODEL_SRC)
	mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -fvisibility=hidden -o $@ $(filter %.c,$^)

# pytest-xdist workers: most tests wait on an emulator that uses one core, so two workers
# keep 2 cores busy (TEST_JOBS=0: one process).
TEST_JOBS ?= 2
test: setup firmware firmware-unix-san cycle-model
	$(VENV)/bin/python -m pytest -c tests/pytest.ini -n $(TEST_JOBS) $(PYTEST_ARGS)

# The long fuzz campaign: random API calls (>= 50,000 on unix-san, 5,000 on each emulated board,
# with hang detection), .mtm/.mtd mutants on every target, emulator kills during model.save; each
# writes build/fuzz/*.json, summary.py prints the table. Fails on any crash, hang or sanitizer report.
FUZZ_SEED ?= 1
fuzz: setup firmware firmware-unix-san
	rm -rf $(BUILD)/fuzz && mkdir -p $(BUILD)/fuzz
	status=0; \
	$(VENV)/bin/python tests/fuzz/api.py --calls 50000 --board-calls 5000 \
		--targets unix-san,qemu-m4f,qemu-rv32,qemu-rv32f --seed $(FUZZ_SEED) || status=1; \
	$(VENV)/bin/python tests/fuzz/files.py --mutants 5000 --targets unix-san,qemu-m4f,qemu-rv32,qemu-rv32f \
		--seed $(FUZZ_SEED) || status=1; \
	$(VENV)/bin/python tests/fuzz/power_loss.py --kills 20 || status=1; \
	$(VENV)/bin/python tests/fuzz/summary.py --check || status=1; \
	exit $$status

# Kernel and training-step benchmarks in guest instructions on both emulated boards;
# prints a table and writes bench/results.json.
bench: setup firmware-qemu-m4f firmware-qemu-rv32 firmware-qemu-rv32f cycle-model
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python -m mcutrain.bench_transfer --out bench/results.json --append

# Learning checks on the emulated M4F (digits from scratch, top-k fine-tuning) and the precision
# checks (digits and Fashion-MNIST CNNs in float32, int8 and mixed over six seeds); tables.
learning: setup firmware-qemu-m4f
	$(VENV)/bin/python bench/learning.py

# Issue 18's experiments: for keyword spotting (SYNTHETIC speech) and Fashion-MNIST, a host
# teacher, students designed for a 64 KB and a 256 KB board, trained on the emulated M4F with
# cross-entropy, distillation and distillation with early halting; writes bench/students.{json,md}.
students: setup firmware-qemu-m4f cycle-model
	$(VENV)/bin/python bench/students.py

# The main job: keyword spotting end to end on the emulated Cortex-M4F (SYNTHETIC speech):
# generate the set, pretrain on the host, adapt on the board (examples/train_kws.py, live
# progress) to held-out voices from a few enrollment clips each, in int8 with dynamic top-k
# and, to compare, with full float32 and int8 updates; results/kws/ (metrics, plots,
# summary.json). `make demo DEMO_BOARD=qemu-rv32f` runs it on another emulated board.
DEMO_BOARD ?= qemu-m4f
demo: setup firmware-$(DEMO_BOARD)
	$(VENV)/bin/python -m mcutrain.demo --board $(DEMO_BOARD)

# Federated keyword spotting (docs/fleet.md): 4 emulated M4F boards, each with its own
# SYNTHETIC voices, 10 rounds of Flower's FedAvgM, against one board alone and centralized
# training; results/fleet-kws/ (comparison.csv, fleet_kws.png, summary.json).
fleet-demo: setup firmware-qemu-m4f
	$(VENV)/bin/python -m mcutrain.fleet.demo --out results/fleet-kws

emulate: setup firmware-qemu-m4f
	$(VENV)/bin/mcutrain emulate --board qemu-m4f

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(CACHE) $(VENV)
