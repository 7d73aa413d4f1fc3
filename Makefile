# meshctl: `make test` and `make demo` are all a fresh root Linux machine needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the suite and the demo use for real (no mocks): installed when run as root.
APT_PACKAGES := wireguard-go wireguard-tools nftables coturn iproute2 dnsutils git openssh-server nebula tinc \
                iperf3 iputils-ping procps conntrack psmisc binutils openssh-client systemd faketime \
                sudo curl
PYTEST_ARGS ?=

.PHONY: all test deps venv binary lint demo test-kernel bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Installs missing Debian packages when run as root; elsewhere the tests say what they skip.
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi; \
	fi

# The whole suite, with the one-file binary as the meshctl every lab node runs (issue 8: the
# binary is what gets tested; a missing hidden import fails here).
test: deps venv dist/meshctl
	MESHCTL_BIN=$(CURDIR)/dist/meshctl $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check meshctl lab tests bench
	$(BIN)/mypy

SOURCES := $(shell find meshctl coord-repo-template packaging -type f -not -name '*.pyc') pyproject.toml

dist/meshctl: $(VENV)/.installed $(SOURCES)
	$(BIN)/pyinstaller --noconfirm --clean --log-level WARN packaging/meshctl.spec
	@ls -l dist/meshctl

binary: deps dist/meshctl

demo: deps venv
	$(BIN)/python -m lab.demo

# Kernel WireGuard in a VM booting Debian 12's kernel; the nft filter tests run there too, so the
# ruleset is proven on the kernel most servers run, not only on this machine's.
test-kernel: deps venv
	bash scripts/test-kernel.sh tests/firewall/test_nft_apply.py tests/firewall/test_nft_golden.py tests/firewall/test_strong_host.py

bench: venv
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
