# netward — build, test, demo, bench.
#
#   make build       bin/netward
#   make test        unit + end-to-end tests (the e2e lab needs root; without
#                    root those tests skip)
#   make demo        real traffic through netward in a namespace lab (root)
#   make bench       kernel forwarding vs netward on one lab, IPv4 and IPv6,
#                    netward with 1,000 rules + 10,000 domains (root; ~14 min;
#                    -short ~2 min); BENCH_FLAGS="-short -rules none
#                    -variant netward= -variant 'no-offload=--offload=false'";
#                    -rounds 3: columns take turns, medians (kernel drifts);
#                    -relay: a column for the cheapest terminating relay
#   make bench-flows only the 100,000 concurrent flows part of bench (~2 min)
#   make soak        SOAK_DURATION of mixed traffic, leak checks (root)
#   make fuzz        every fuzz target, FUZZTIME each (default 1m)
#   make lint        gofmt + go vet
#   make clean-lab   remove labs left behind by killed runs (root)
#   make tools       check the tools demo and test run; as root on
#                    Debian/Ubuntu install the missing ones (e2e/tools.sh;
#                    NETWARD_NO_INSTALL=1: only name them)
#   make install     bin/netward, the systemd unit, config and logrotate files
#                    under DESTDIR/PREFIX (root)

export PATH := /usr/local/go/bin:$(PATH)
GO           ?= go
FUZZTIME     ?= 1m
TEST_TIMEOUT ?= 20m
# BENCH_FLAGS are passed to the bench program, e.g. BENCH_FLAGS=-short.
BENCH_FLAGS  ?=

PREFIX       ?= /usr/local
DESTDIR      ?=

.PHONY: install all build test demo bench bench-flows fuzz lint clean-lab clean soak tools

all: build

build:
	$(GO) build -o bin/netward ./cmd/netward

# tools runs before demo and test: a fresh machine needs only these two
# commands (see e2e/tools.sh; .ci/run calls it too).
tools:
	@sh e2e/tools.sh

test: tools
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

demo: tools build
	$(GO) run ./e2e/cmd/demo -netward bin/netward

bench: build
	$(GO) run ./e2e/cmd/bench -netward bin/netward $(BENCH_FLAGS)

bench-flows: build
	$(GO) run ./e2e/cmd/bench -netward bin/netward -only flows $(BENCH_FLAGS)

# Fuzz targets are found in the code: every FuzzXxx that `go test -list`
# reports, in every package, runs for FUZZTIME.
fuzz:
	@set -e; n=0; \
	for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	    n=$$((n+1)); \
	  done; \
	done; \
	echo "fuzzed $$n targets for $(FUZZTIME) each"

lint:
	@bad=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt -l reports:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# install puts netward where dist/netward.service expects it and never
# overwrites a config an operator has edited.
install: build
	install -D -m 0755 bin/netward $(DESTDIR)$(PREFIX)/bin/netward
	install -D -m 0644 dist/netward.service $(DESTDIR)/etc/systemd/system/netward.service
	install -D -m 0644 dist/logrotate.d/netward $(DESTDIR)/etc/logrotate.d/netward
	install -d -m 0750 $(DESTDIR)/etc/netward $(DESTDIR)/var/log/netward
	test -e $(DESTDIR)/etc/netward/netward.yaml || install -m 0640 examples/netward.yaml $(DESTDIR)/etc/netward/netward.yaml
	test -e $(DESTDIR)/etc/netward/rules.yaml || { \
	  install -m 0640 examples/rules/rules.yaml examples/rules/deny.html $(DESTDIR)/etc/netward/ && \
	  install -D -m 0640 -t $(DESTDIR)/etc/netward/lists examples/rules/lists/*; }
	$(DESTDIR)$(PREFIX)/bin/netward check $(DESTDIR)/etc/netward/rules.yaml
	@echo "installed; then: systemctl daemon-reload && systemctl enable --now netward"

clean-lab:
	$(GO) run ./e2e/cmd/lab clean

# soak: SOAK_DURATION (default 10m) of mixed allowed/denied traffic at high
# connection churn; fails if netward's goroutines or RSS do not come back.
soak: build
	$(GO) run ./e2e/cmd/soak -netward bin/netward -d $(or $(SOAK_DURATION),10m)

clean:
	rm -rf bin
