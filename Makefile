# cgnetns: top-level targets.  Run as root.
#   make install     Python package (+ pyroute2, psutil) into $(PYTHON)'s environment,
#                    commands in $(BINDIR), the helper setuid root, /etc/cgnetns/allow
#                    when absent, contrib files.
#   make demo        a sandboxed build whose distcc reaches a distcc server
#   make check       the test suite (root, real kernel)
#   make bench       benchmarks (by hand; figures go to README.rst)

PYTHON  ?= python3
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib/cgnetns
MANDIR  ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
DESTDIR ?=
# The real interpreter (python3 on PATH may be a pyenv shim): commands get it in
# their shebang so that they work from any PATH.
PYEXE   := $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable))')
COMMANDS = cgnetns-run:run cgnetns-show:show cgnetns-gc:gc cgnetnsd:broker
PYTEST_ARGS ?=

.PHONY: check-unit lint all install install-deps install-python install-scripts install-helper \
        install-config install-contrib install-man demo stress fuzz check check-deps check-python bench clean

all:
	$(MAKE) -C helper

install: install-deps install-python install-scripts install-helper install-config install-contrib install-man

install-deps:
	@tools/ensure-deps build

# Python reads its paths from what this install compiles into the helper
# (cgnetns/paths.py).
cgnetns/_paths.py: FORCE
	@printf '# written by make install (cgnetns/paths.py)\nPREFIX = "%s"\nBINDIR = "%s"\nPKGLIBDIR = "%s"\nSYSCONFDIR = "%s"\n' \
	    '$(PREFIX)' '$(BINDIR)' '$(LIBDIR)' '$(SYSCONFDIR)' > $@.tmp && mv -f $@.tmp $@

FORCE:

install-python: cgnetns/_paths.py
	$(PYEXE) -m pip install --quiet --root-user-action=ignore --disable-pip-version-check .

install-scripts:
	install -d -m 755 $(DESTDIR)$(BINDIR)
	@for pair in $(COMMANDS); do \
	    name=$${pair%%:*}; mod=$${pair#*:}; \
	    printf '#!%s\nimport sys\nfrom cgnetns.cli.%s import main\nsys.exit(main())\n' \
	        '$(PYEXE)' "$$mod" > $(DESTDIR)$(BINDIR)/$$name.tmp; \
	    chmod 755 $(DESTDIR)$(BINDIR)/$$name.tmp; \
	    mv -f $(DESTDIR)$(BINDIR)/$$name.tmp $(DESTDIR)$(BINDIR)/$$name; \
	    echo "installed $(DESTDIR)$(BINDIR)/$$name"; \
	done

install-helper:
	$(MAKE) -C helper install DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) BINDIR=$(BINDIR) LIBDIR=$(LIBDIR) \
	    SYSCONFDIR=$(SYSCONFDIR)

install-config:
	install -d -m 755 $(DESTDIR)$(SYSCONFDIR)/cgnetns
	@if [ ! -e $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow ]; then \
	    tools/make-allow-list > $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow.tmp && \
	    chmod 644 $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow.tmp && \
	    mv $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow.tmp $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow && \
	    echo "created $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow"; \
	else echo "kept $(DESTDIR)$(SYSCONFDIR)/cgnetns/allow"; fi

install-contrib:
	@if [ -f contrib/Makefile ]; then $(MAKE) -C contrib install DESTDIR=$(DESTDIR) \
	    PREFIX=$(PREFIX) BINDIR=$(BINDIR) MANDIR=$(MANDIR) PYEXE=$(PYEXE); fi

install-man:
	@if [ -f doc/Makefile ]; then $(MAKE) -C doc install DESTDIR=$(DESTDIR) MANDIR=$(MANDIR); fi

demo:
	@tools/ensure-deps demo
	$(PYEXE) -m cgnetns.demo

check-deps:
	@tools/ensure-deps test
	@$(PYEXE) -c 'import pytest, hypothesis, portage, flake8' 2>/dev/null || \
	    $(PYEXE) -m pip install --quiet --root-user-action=ignore --disable-pip-version-check '.[test]'

check-python: check-deps
	$(PYEXE) -m pytest -q $(PYTEST_ARGS) tests

# No root, no kernel state, seconds: parsers, the protocol, docs.
check-unit:
	$(PYEXE) -m pytest -q -m unit $(PYTEST_ARGS) tests

# What is a bug or a trap: pyflakes (setup.cfg [flake8]), shellcheck on the
# shell files, and the helper built with -Wall -Wextra -Werror (its Makefile).
SHELL_FILES = tools/ensure-deps helper/masq.sh.in helper/testsupport/probe.sh \
              contrib/portage/bashrc .ci/run
lint:
	$(PYEXE) -m flake8 cgnetns tests bench stress tools
	shellcheck -S warning $(SHELL_FILES)
	@# openrc-run reads the variables the script sets (SC2034)
	shellcheck -S warning -s sh -e SC2034 contrib/openrc/cgnetnsd
	$(MAKE) -s -C helper B=$(CURDIR)/build/lint all

check: check-python
	@if grep -q '^check-fuzz:' helper/Makefile 2>/dev/null; then $(MAKE) -C helper check-fuzz; fi

bench:
	$(PYEXE) -m bench

stress:
	$(PYEXE) -m stress

fuzz:
	$(MAKE) -C helper fuzz

clean:
	-$(MAKE) -C helper clean
	rm -rf build *.egg-info .pytest_cache

# Single-point bugs (tools/mutants_table.py) in a copy of the checkout; each
# must be killed by its tests (tools/mutants.py; root; not part of check).
.PHONY: mutants
mutants:
	$(PYEXE) tools/mutants.py $(MUTANTS_ARGS)
