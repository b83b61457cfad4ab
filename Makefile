# vnet: `make demo` and `make test` each install what they need (idempotently), then run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SYSTEM_PYTHON ?= python3
APT_PACKAGES := python3 python3-venv iproute2 nftables libnftables1 python3-nftables \
	qemu-system-x86 ipxe-qemu dnsmasq-base kea-dhcp4-server kea-admin isc-dhcp-client \
	udhcpc dhcpcd-base busybox knot-dnsutils dnsperf tftp-hpa atftp tftpd-hpa curl \
	util-linux procps iputils-ping netcat-openbsd \
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
PYTEST_ARGS ?=

.PHONY: all deps venv lint test unit demo bench clean-test-leftovers guest-assets

all: test

# Debian packages: install only what is missing (no network use when all are present).
deps:
	@missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null \
		| awk '$$NF != "installed" {print $$1}'; \
		for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	if [ -n "$${missing// /}" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# Debian's official libnftables binding, made importable in the venv.
	ln -sfn /usr/lib/python3/dist-packages/nftables "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nftables"
	touch $@

venv: deps $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check vnet tests bench demo $(wildcard integration)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

guest-assets: venv
	@if [ -f tests/guestvm.py ]; then $(PY) tests/guestvm.py --prepare; fi

unit: venv
	$(VENV)/bin/pytest tests/unit -q

test: lint guest-assets
	$(VENV)/bin/pytest -q $(PYTEST_ARGS) tests $(wildcard integration)

demo: venv
	$(PY) demo/run.py $(DEMO_ARGS)

bench: venv
	$(PY) bench/l2.py
