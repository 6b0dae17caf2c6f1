# A thin table over the stage CLIs (`python -m <stage> --help` for every option).
# Every target depends on the setup stamp, so `make demo` / `make test` work as the first command.
PY      := .venv/bin/python
STAMP   := .venv/.setup-stamp
# the aarch64 LiteRT runtime run under qemu-user (runtime/arm64.py); `make test` installs it too
ARM_DIR := .arm64
ARM_STAMP := $(ARM_DIR)/.stamp
DEVICE  ?= pixel
ARCH    ?=
DATA    ?=
EPOCHS  ?=
INPUT   ?=
CKPT    ?=
MODEL   ?=
MODEL_DIR ?=
TARGET_MS ?=
TARGETS ?=
SPACE   ?=
CALIB   ?=
THREADS ?= 1
ARM     ?=
TESTS   ?= tests
# pytest-xdist workers for `make test`: one per core, at most 4 (JOBS=0: no workers, one process)
JOBS    ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

opt = $(if $(2),$(1) $(2))

.PHONY: setup setup-arm test lint demo closed-loop search train lut convert quantize qat parity-test bench fidelity info clean help

help:
	@echo "make setup | setup-arm | test | demo | closed-loop | search DEVICE=pixel [SPACE=neck] | train ARCH=… | lut DEVICE=host | convert | quantize | qat | parity-test | bench MODEL=… | fidelity DEVICE=host | info ARCH=…"

setup: $(STAMP)
$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null || { echo "setup: python3.11 is required"; exit 1; }
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,tf]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps tflite-support==0.4.4  # see pyproject.toml
	@ldconfig -p | grep -q 'libusb-1.0.so.0 ' || { apt-get update -qq && apt-get install -y -q libusb-1.0-0; } || \
		echo "setup: tflite-support's metadata parser needs libusb-1.0 (apt-get install libusb-1.0-0)"
	@touch $@

setup-arm: $(ARM_STAMP)
$(ARM_STAMP): runtime/setup_arm64.sh runtime/arm64-requirements.txt | $(STAMP)
	bash runtime/setup_arm64.sh $(ARM_DIR) $(PY)

test: $(STAMP) $(ARM_STAMP)
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder $(TESTS)

lint: $(STAMP)
	$(PY) -m ruff check .

info: $(STAMP)
	$(PY) -m model info $(or $(ARCH),efficientpose_a) $(call opt,--family,$(PHI))

demo: $(STAMP)
	$(PY) -m demo $(call opt,--data,$(DATA))

# search reads LUT files: this machine's host LUT is measured first (a fast pass over the space's missing keys)
search: $(STAMP)
	$(if $(filter host host-int8,$(DEVICE)),$(PY) -m device_bench lut --device $(DEVICE) $(call opt,--space,$(SPACE)) --no-shipped-archs --rounds 3 --per-visit 2 &&) $(PY) -m search --device $(DEVICE) $(call opt,--space,$(SPACE)) $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--target-ms,$(TARGET_MS)) $(call opt,--targets,$(TARGETS)) $(call opt,--input,$(INPUT))

# measure (this host's int8 LUT when missing), search, convert, measure: stage steps (demo/closed_loop.py)
closed-loop: $(STAMP)
	$(PY) -m demo closed-loop $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS))

train: $(STAMP)
	$(PY) -m train --arch $(or $(ARCH),efficientpose_a) $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--input,$(INPUT))

lut: $(STAMP)
	$(PY) -m device_bench lut --device $(DEVICE) $(call opt,--space,$(SPACE)) --threads $(THREADS)

fidelity: $(STAMP)
	$(PY) -m device_bench fidelity --device $(DEVICE) --threads $(THREADS)

bench: $(STAMP)
	$(PY) -m device_bench bench --device $(or $(filter-out pixel,$(DEVICE)),host) $(call opt,--model,$(MODEL)) $(call opt,--model-dir,$(MODEL_DIR)) $(call opt,--kernels,$(KERNELS)) --threads $(THREADS)

convert: $(STAMP)
	$(PY) -m convert $(call opt,--ckpt,$(CKPT)) $(call opt,--arch,$(ARCH)) $(call opt,--calib,$(CALIB)) $(call opt,--data,$(DATA)) $(call opt,--targets,$(TARGETS))

quantize: $(STAMP)
	$(PY) -m quantize run $(call opt,--ckpt,$(CKPT)) $(call opt,--arch,$(ARCH)) $(call opt,--calib,$(CALIB)) $(call opt,--data,$(DATA)) $(call opt,--targets,$(TARGETS))

qat: $(STAMP)
	$(PY) -m quantize qat $(call opt,--ckpt,$(CKPT)) $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS))

# ARM=1: also every .tflite on the four ARM CPU profiles (aarch64 LiteRT under qemu-user; ARM=armv8.0,... picks)
parity-test: $(STAMP) $(if $(ARM),$(ARM_STAMP))
	$(PY) -m parity $(call opt,--model-dir,$(MODEL_DIR)) $(call opt,--data,$(DATA)) $(if $(ARM),--arm $(if $(filter 1,$(ARM)),all,$(ARM)))

clean:
	rm -rf runs artifacts .pytest_cache
