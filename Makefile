# A thin table over the stage CLIs (`python -m <stage> --help` for every option).
# Every target depends on the setup stamp, so `make demo` / `make test` work as the first command.
PY      := .venv/bin/python
STAMP   := .venv/.setup-stamp
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
CALIB   ?=
THREADS ?= 1
TESTS   ?= tests

opt = $(if $(2),$(1) $(2))
# A stage whose issue has not landed prints "not built yet" and fails.
need = @test -f $(1)/__main__.py || { echo "$(1): not built yet (see the issue tracker)"; exit 1; }

.PHONY: setup test lint demo search train lut convert quantize parity-test bench fidelity info clean help

help:
	@echo "make setup | test | demo | search DEVICE=pixel | train ARCH=… | lut DEVICE=host | convert | quantize | parity-test | bench MODEL=… | fidelity DEVICE=host | info ARCH=…"

setup: $(STAMP)
$(STAMP): pyproject.toml
	@command -v python3.11 >/dev/null || { echo "setup: python3.11 is required"; exit 1; }
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q $(TESTS)

lint: $(STAMP)
	$(PY) -m ruff check .

info: $(STAMP)
	$(PY) -m model info $(or $(ARCH),efficientpose_a) $(call opt,--family,$(PHI))

demo: $(STAMP)
	$(call need,demo)
	$(PY) -m demo $(call opt,--data,$(DATA))

search: $(STAMP)
	$(call need,search)
	$(PY) -m search --device $(DEVICE) $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--target-ms,$(TARGET_MS)) $(call opt,--targets,$(TARGETS)) $(call opt,--input,$(INPUT))

train: $(STAMP)
	$(call need,train)
	$(PY) -m train --arch $(or $(ARCH),efficientpose_a) $(call opt,--data,$(DATA)) $(call opt,--epochs,$(EPOCHS)) $(call opt,--input,$(INPUT))

lut: $(STAMP)
	$(call need,device_bench)
	$(PY) -m device_bench lut --device $(DEVICE) --threads $(THREADS)

fidelity: $(STAMP)
	$(call need,device_bench)
	$(PY) -m device_bench fidelity --device $(DEVICE) --threads $(THREADS)

bench: $(STAMP)
	$(call need,device_bench)
	$(PY) -m device_bench bench --device $(or $(filter-out pixel,$(DEVICE)),host) $(call opt,--model,$(MODEL)) $(call opt,--model-dir,$(MODEL_DIR)) --threads $(THREADS)

convert: $(STAMP)
	$(call need,convert)
	$(PY) -m convert $(call opt,--ckpt,$(CKPT)) $(call opt,--arch,$(ARCH)) $(call opt,--calib,$(CALIB)) $(call opt,--data,$(DATA))

quantize: $(STAMP)
	$(call need,quantize)
	$(PY) -m quantize $(call opt,--ckpt,$(CKPT)) $(call opt,--arch,$(ARCH)) $(call opt,--calib,$(CALIB)) $(call opt,--data,$(DATA))

parity-test: $(STAMP)
	$(call need,parity)
	$(PY) -m parity $(call opt,--model-dir,$(MODEL_DIR)) $(call opt,--data,$(DATA))

clean:
	rm -rf runs artifacts .pytest_cache
