# meshtrace — build, test and demo. Each target installs the Debian packages it needs.
SWIFT ?= swift
VENV ?= .venv
PYTHON := $(VENV)/bin/python
APT_PACKAGES := libzstd-dev liblz4-dev zlib1g-dev pkg-config python3-venv

.PHONY: all deps venv build test demo bench bench-query clean

all: build

# Installs missing Debian packages (as root, or through sudo).
deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	fi

# A virtualenv with the real OTLP peers the interoperability tests talk to.
$(VENV)/.installed: Tests/interop/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r Tests/interop/requirements.txt
	touch $@

venv: $(VENV)/.installed

build: deps
	$(SWIFT) build

test: deps venv
	$(SWIFT) build --build-tests
	$(SWIFT) build --product meshexporter
	MESHTRACE_PYTHON=$(abspath $(PYTHON)) $(SWIFT) test --skip-build
	MESHTRACE_BIN=$$($(SWIFT) build --show-bin-path) $(PYTHON) -m pytest Tests/interop -q

# Storage benchmarks (release build); figures go to BENCHMARKS.md.
bench: deps venv
	$(PYTHON) -m pip install -q --disable-pip-version-check -r Benchmarks/requirements.txt
	$(SWIFT) build -c release --product meshtrace-bench
	$$($(SWIFT) build -c release --show-bin-path)/meshtrace-bench storage --python $(PYTHON)

# Query benchmark: meshtrace against DuckDB over Parquet, 10 million spans (release build).
bench-query: deps venv
	$(PYTHON) -m pip install -q --disable-pip-version-check -r Benchmarks/requirements.txt
	$(SWIFT) build -c release --product meshtrace-bench
	$$($(SWIFT) build -c release --show-bin-path)/meshtrace-bench query --python $(PYTHON)

demo: deps
	$(SWIFT) build --product meshtrace
	$$($(SWIFT) build --show-bin-path)/meshtrace demo

clean:
	rm -rf .build $(VENV) meshtrace-data
