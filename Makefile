# RainMaker-style user-node mapping on ESP32 in MicroPython.
# `make demo` and `make test` work as the first command on a fresh clone.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
RMKIT   := $(VENV)/bin/rmkit
STAMP   := $(VENV)/.installed
ESPCLI_VENV  := .venv-espcli
ESPCLI_STAMP := $(ESPCLI_VENV)/.installed

# knobs for the long-running targets (see `make help`)
BOARD   ?= vb1
FLASH   ?= vboards/$(BOARD)
SOFTAP  ?=
AIR     ?=
PORT    ?=
FIRMWARE ?=
ERASE   ?=
BAUD    ?=
TCP_PORT ?=
CLOUD_PORT ?=
BROKER_LISTEN ?=
BROKER_PORT ?=
TIMEOUT ?=
HOST    ?=
POP     ?=
SSID    ?=
PASSPHRASE ?=
CLOUD_URL ?=
EMAIL   ?=
USER_ID ?=
WORKDIR ?=
HEAP    ?=
MAPPING ?=
USER_MAPPING ?=
WIFI    ?=
FACTORY ?=
CPU     ?=
PYTEST_ARGS ?=
TIERS   ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo espcli-demo vboard repl monitor flash deploy reset provision cloud sandbox bench espcli clean

help: ## list the targets
	@echo "Targets (knobs in CAPS, e.g. make vboard BOARD=vb2):"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 14

setup: $(STAMP) mosquitto ## create .venv (PYTHON=python3.x picks the interpreter), install pinned tools, install mosquitto if missing (idempotent, offline once done)

# pip's own lines, one per package, so a ~15 s install shows what it is doing (bash for pipefail)
PIP_INSTALL = set -o pipefail; $(1) -m pip install --disable-pip-version-check --progress-bar off -r $(2) \
	  | { grep --line-buffered -E '^(Collecting|Building|Installing|Successfully)' || true; } | sed -u 's/^/setup:   /'
$(STAMP) $(ESPCLI_STAMP): SHELL := /bin/bash

$(STAMP): requirements-dev.txt tools/pyproject.toml
	@test -x $(PY) || { echo "setup: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "setup: installing requirements-dev.txt into $(VENV)"
	@$(call PIP_INSTALL,$(PY),requirements-dev.txt)
	@touch $@

.PHONY: mosquitto
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "setup: installing mosquitto (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else \
	    echo "setup: mosquitto is missing: run 'sudo apt-get install -y mosquitto' (or your OS's package) and retry"; exit 1; \
	  fi; }

espcli: $(ESPCLI_STAMP) ## install Espressif's esp-rainmaker-cli 1.14.1 into its own venv (.venv-espcli)

$(ESPCLI_STAMP): requirements-espcli.txt
	@test -x $(ESPCLI_VENV)/bin/python || $(PYTHON) -m venv $(ESPCLI_VENV)
	@echo "setup: installing esp-rainmaker-cli into $(ESPCLI_VENV)"
	@$(call PIP_INSTALL,$(ESPCLI_VENV)/bin/python,requirements-espcli.txt)
	@touch $@

test: setup espcli ## run every test (host_tests/), virtual boards, broker and cloud included (JOBS=4 workers: most tests wait on boards and brokers, so 4 fit 2 cores; PYTEST_ARGS=... for pytest)
	$(VENV)/bin/pytest host_tests -n $(or $(JOBS),4) --maxschedchunk 2 $(PYTEST_ARGS)

test-fast: setup ## the unit tier only, for an edit-test loop: firmware logic under CPython and the unix port, codecs, cloud API in-process (TIERS="unit or component" for more; tiers in host_tests/support/tiers.py)
	$(VENV)/bin/pytest host_tests -n $(or $(JOBS),2) -m "$(or $(TIERS),unit)" $(PYTEST_ARGS)

demo: setup ## the whole mapping flow on a virtual board, broker and local cloud (TRANSPORT=ble: provision over BLE; MAPPING=secret: the secret-key flow; CPU=esp32: the board computes at an ESP32's speed)
	$(RMKIT) demo $(if $(TRANSPORT),--transport $(TRANSPORT)) $(if $(MAPPING),--mapping $(MAPPING)) $(if $(CPU),--cpu $(CPU))

espcli-demo: setup espcli ## Espressif's esp-rainmaker-cli provisions a sandbox's board and maps it, end to end, in a private network namespace (needs unshare), its output shown; everything stopped at the end, on failure and on Ctrl-C (USER_MAPPING=secret|both|ch_resp, WORKDIR)
	$(RMKIT) espcli-demo $(if $(USER_MAPPING),--user-mapping $(USER_MAPPING)) $(if $(WORKDIR),--workdir $(WORKDIR))

vboard: setup ## start one virtual board in the foreground (BOARD, FLASH, TCP_PORT, SOFTAP, AIR = its Wi-Fi, default FLASH.air.json, HEAP = a fixed heap, e.g. 110K; CPU=esp32: compute at an ESP32's speed)
	$(if $(PORT),$(error PORT names a board's serial device (make deploy); the virtual board's TCP port is TCP_PORT=$(PORT)))
	$(RMKIT) vboard --name $(BOARD) --flash $(FLASH) $(if $(TCP_PORT),--port $(TCP_PORT)) $(if $(SOFTAP),--softap $(SOFTAP)) $(if $(AIR),--air $(AIR)) $(if $(HEAP),--heap $(HEAP)) $(if $(CPU),--cpu $(CPU))

repl: setup ## open a REPL on the board started by `make vboard` (BOARD), or on a real board (PORT=/dev/ttyUSB0, or auto)
	$(RMKIT) repl $(if $(PORT),--port $(PORT),--name $(BOARD))

monitor: setup ## follow a board's serial output with timestamps: PORT= (default: the one ESP32 on USB) or BOARD= (virtual)
	$(RMKIT) monitor $(if $(PORT),--port $(PORT),$(if $(filter command line environment,$(origin BOARD)),--name $(BOARD),--port auto))

flash: setup ## write MicroPython to a board with esptool and verify it: FIRMWARE=ESP32_GENERIC-*.bin, PORT=/dev/ttyUSB0 (default: the one ESP32 on USB; or a virtual board's rfc2217:// URL) [ERASE=1 BAUD=460800]
	$(if $(FIRMWARE),,$(error give FIRMWARE= (a MicroPython firmware .bin, e.g. ESP32_GENERIC-*.bin from micropython.org)))
	$(RMKIT) flash --port $(or $(PORT),auto) $(if $(BAUD),--baud $(BAUD)) $(if $(filter 1 yes true,$(ERASE)),--erase) "$(FIRMWARE)"

deploy: setup ## put firmware/ on a board: FLASH=dir (virtual) or PORT=/dev/ttyUSB0 (real), as .mpy
	$(if $(and $(PORT),$(filter command line environment,$(origin FLASH))),$(error give FLASH= (a virtual board's flash directory) or PORT= (a board's serial port), not both))
	$(RMKIT) deploy $(if $(PORT),--port $(PORT),--flash $(FLASH))

reset: setup ## put a node back into provisioning: WIFI=1 (forget its network, keep its user) or FACTORY=1 (the node's factory reset: tells the cloud), on BOARD= (a running virtual board, default vb1), FLASH= or PORT=
	$(if $(WIFI),$(if $(FACTORY),$(error give WIFI=1 or FACTORY=1, not both)),$(if $(FACTORY),,$(error give WIFI=1 (forget the network, keep the user) or FACTORY=1 (the factory reset))))
	$(RMKIT) reset $(if $(WIFI),--wifi,--factory) $(if $(PORT),--port $(PORT),$(if $(filter command line environment,$(origin FLASH)),--flash $(FLASH),--name $(BOARD)))

provision: setup ## provision a node: HOST=ip:port (SoftAP) or DEVICE=PROV_xxxxxx [HCI=tcp-client:127.0.0.1:N] (BLE), POP= SSID= PASSPHRASE= and CLOUD_URL= EMAIL= (password in RMKIT_PASSWORD) or USER_ID=
	@RMKIT_POP="$(POP)" RMKIT_PASSPHRASE="$(PASSPHRASE)" $(RMKIT) provision \
	  $(if $(DEVICE),--transport ble --device "$(DEVICE)" $(if $(HCI),--hci "$(HCI)"),--host "$(HOST)") --ssid "$(SSID)" \
	  $(if $(CLOUD_URL),--cloud-url "$(CLOUD_URL)" --email "$(EMAIL)",--user-id "$(USER_ID)")

cloud: setup ## mosquitto (mutual TLS, PKI in pki/) + the local cloud with a test user, until Ctrl-C (CLOUD_PORT, TIMEOUT; for a real board BROKER_LISTEN=0.0.0.0 BROKER_PORT=8883)
	$(RMKIT) sandbox --no-board --workdir build/cloud --pki-dir pki $(if $(CLOUD_PORT),--cloud-port $(CLOUD_PORT)) \
	  $(if $(TIMEOUT),--mapping-timeout $(TIMEOUT)) $(if $(BROKER_LISTEN),--broker-listen $(BROKER_LISTEN)) \
	  $(if $(BROKER_PORT),--broker-port $(BROKER_PORT))

sandbox: setup ## broker + cloud + one unprovisioned virtual board for any client, until Ctrl-C (TRANSPORT=softap|ble|both, USER_MAPPING=both|ch_resp|secret, SOFTAP, CLOUD_PORT, TIMEOUT, WORKDIR, BOARD = the board's name, default vb-sandbox, HEAP, CPU=esp32)
	$(RMKIT) sandbox $(if $(filter command line environment,$(origin BOARD)),--board $(BOARD)) $(if $(TRANSPORT),--transport $(TRANSPORT)) $(if $(USER_MAPPING),--user-mapping $(USER_MAPPING)) $(if $(SOFTAP),--softap $(SOFTAP)) $(if $(CLOUD_PORT),--cloud-port $(CLOUD_PORT)) \
	  $(if $(TIMEOUT),--mapping-timeout $(TIMEOUT)) $(if $(WORKDIR),--workdir $(WORKDIR)) $(if $(HEAP),--heap $(HEAP)) \
	  $(if $(CPU),--cpu $(CPU))

bench: setup espcli ## benchmarks (about 5-6 minutes on 2 cores): bench/results.md, one table with each figure beside its reference (ESP32-speed rows beside host-speed ones), results.json, scale.png
	$(RMKIT) bench

clean: ## remove venvs, build output and virtual boards' flash
	rm -rf $(VENV) $(ESPCLI_VENV) build artifacts vboards
