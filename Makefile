# cgnetns: top-level targets.  Run as root.
#   make install     Python package (+ pyroute2, psutil) into $(PYTHON)'s environment,
#                    commands in $(BINDIR), the helper setuid root, /etc/cgnetns/allow
#                    when absent, contrib files, manual pages.  With DESTDIR: a
#                    complete layout below DESTDIR (the package copied into
#                    $(PYTHONDIR), no pip, nothing outside DESTDIR changed).
#   make demo        a sandboxed build whose distcc reaches a distcc server
#   make check       the test suite (root, real kernel)
#   make bench       benchmarks (by hand; figures go to README.rst)

PYTHON  ?= python3
# Every path: paths.mk (PREFIX, BINDIR, LIBDIR, MANDIR, SYSCONFDIR, ...), the
# one place that names them for the helper, Python, contrib and the manuals.
include paths.mk
DESTDIR ?=
# The real interpreter (python3 on PATH may be a pyenv shim): commands get it in
# their shebang so that they work from any PATH.
PYEXE   := $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable))')
# Where a DESTDIR install puts the package: PYEXE's site directory below PREFIX
# (packagers set their own, e.g. PYTHONDIR=/usr/lib/python3/dist-packages).
PYTHONDIR ?= $(shell $(PYEXE) -c 'import sysconfig; print(sysconfig.get_path("purelib", \
    "posix_prefix", {"base": "$(PREFIX)", "platbase": "$(PREFIX)"}))')
# The helper's build directory (helper/Makefile's B); rebuilt when the paths change.
HELPER_BUILD ?=
COMMANDS = cgnetns-run:run cgnetns-show:show cgnetns-gc:gc cgnetnsd:broker
PYTEST_ARGS ?=

.PHONY: check-unit lint all install install-deps install-python install-scripts install-helper \
        install-config install-contrib install-man python-paths demo stress fuzz check check-deps \
        check-python bench clean

all:
	$(MAKE) -C helper

install: install-deps install-python install-scripts install-helper install-config install-contrib install-man

install-deps:
	@tools/ensure-deps build

# cgnetns/_paths.py: what Python reads (cgnetns/paths.py), from the variables
# that are compiled into the helper.  $(call write-paths-py,FILE)
define write-paths-py
	@mkdir -p $(dir $(1))
	@$(PYEXE) -c 'import sys; out = sys.argv[1]; \
	    lines = ["# written by make install from paths.mk (read by cgnetns/paths.py)\n"]; \
	    lines += ["%s = %r\n" % tuple(a.split("=", 1)) for a in sys.argv[2:]]; \
	    open(out + ".tmp", "w").write("".join(lines))' $(1) $(PATH_ARGS)
	@mv -f $(1).tmp $(1)
endef

# In the checkout: what a plain `make install` installs with pip, and what a
# packager that installs the package itself (the ebuild) runs first
# (make python-paths PREFIX=... SYSCONFDIR=...).
cgnetns/_paths.py: FORCE
	$(call write-paths-py,$@)

python-paths: cgnetns/_paths.py

FORCE:

ifeq ($(DESTDIR),)
# The running system: pip, into $(PYEXE)'s environment, with pyroute2 and psutil.
install-python: cgnetns/_paths.py
	$(PYEXE) -m pip install --quiet --root-user-action=ignore --disable-pip-version-check .
else
# A DESTDIR layout: the package's files copied, _paths.py written there (the
# checkout's is left alone), compiled with the paths they will have.  No pip: it
# would build in the checkout, need the network for its build environment and
# take _paths.py from the checkout; dependencies are the packager's.
PY_DEST = $(DESTDIR)$(PYTHONDIR)
install-python:
	@test -n "$(PYTHONDIR)" || { echo "install-python: no PYTHONDIR" >&2; exit 1; }
	@cd cgnetns && find . -name '*.py' ! -name _paths.py ! -path '*/__pycache__/*' | sort | \
	    while read -r f; do \
	        install -D -m 644 "$$f" "$(PY_DEST)/cgnetns/$$f" || exit 1; done
	$(call write-paths-py,$(PY_DEST)/cgnetns/_paths.py)
	@chmod 644 $(PY_DEST)/cgnetns/_paths.py
	@$(PYEXE) -m compileall -q -s $(DESTDIR) $(PY_DEST)/cgnetns >/dev/null
	@echo "installed $(PY_DEST)/cgnetns"
	@$(PYEXE) -c 'import sys; sys.exit("$(PYTHONDIR)" in sys.path)' && \
	    echo "note: $(PYTHONDIR) is not on $(PYEXE)'s sys.path (set PYTHONDIR or PYEXE)" || true
endif

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
	$(MAKE) -C helper install DESTDIR=$(DESTDIR) $(PATH_ARGS) $(if $(HELPER_BUILD),B=$(HELPER_BUILD))

install-config:
	install -d -m 755 $(DESTDIR)$(patsubst %/,%,$(dir $(ALLOW_PATH)))
	@if [ ! -e $(DESTDIR)$(ALLOW_PATH) ]; then \
	    tools/make-allow-list > $(DESTDIR)$(ALLOW_PATH).tmp && \
	    chmod 644 $(DESTDIR)$(ALLOW_PATH).tmp && \
	    mv $(DESTDIR)$(ALLOW_PATH).tmp $(DESTDIR)$(ALLOW_PATH) && \
	    echo "created $(DESTDIR)$(ALLOW_PATH)"; \
	else echo "kept $(DESTDIR)$(ALLOW_PATH)"; fi

install-contrib:
	@if [ -f contrib/Makefile ]; then $(MAKE) -C contrib install DESTDIR=$(DESTDIR) \
	    $(PATH_ARGS) PYEXE=$(PYEXE); fi

install-man:
	@if [ -f doc/Makefile ]; then $(MAKE) -C doc install DESTDIR=$(DESTDIR) $(PATH_ARGS); fi

demo:
	@tools/ensure-deps demo
	$(PYEXE) -m testbed.demo

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
