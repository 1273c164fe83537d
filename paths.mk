# paths.mk: every install path and every compiled-in runtime path of cgnetns,
# named once.  Included by Makefile, helper/Makefile, contrib/Makefile and
# doc/Makefile; from these same variables `make install` (with PREFIX,
# DESTDIR, SYSCONFDIR, ... as given):
#   - compiles the paths into the helper and the front (-D, helper/Makefile,
#     helper/helper.h),
#   - writes cgnetns/_paths.py, which cgnetns/paths.py reads (Python),
#   - substitutes @NAME@ below in the units, scripts and manual pages it
#     installs ($(SUBST); the manual pages and contrib/portage, written with
#     the default paths, through $(DOC_SUBST)).
# A checkout that was never installed: cgnetns/paths.py reads the defaults
# from this file, so keep the path lines plain `NAME ?= VALUE` (references
# $(NAME) allowed, nothing else).

PREFIX        ?= /usr/local
BINDIR        ?= $(PREFIX)/bin
# the package's own directory (helper, masquerade directories)
LIBDIR        ?= $(PREFIX)/lib/cgnetns
PKGLIBDIR     ?= $(LIBDIR)
DATADIR       ?= $(PREFIX)/share
MANDIR        ?= $(DATADIR)/man
SYSCONFDIR    ?= /etc
# /run/cgnetns: runtime state (doc/FORMAT.rst); not below PREFIX
RUNDIR        ?= /run/cgnetns
MASQDIR       ?= $(PKGLIBDIR)/masq
MASQBINDIR    ?= $(PKGLIBDIR)/bin
FRONT_PATH    ?= $(BINDIR)/cgnetns-exec
HELPER_PATH   ?= $(PKGLIBDIR)/cgnetns-helper
ALLOW_PATH    ?= $(SYSCONFDIR)/cgnetns/allow
PINS_DIR      ?= $(RUNDIR)/pins
BROKER_SOCKET ?= $(RUNDIR)/cgnetnsd.sock

# The variables above, passed on to the sub-makes and written to _paths.py.
PATH_VARS := PREFIX BINDIR LIBDIR PKGLIBDIR DATADIR MANDIR SYSCONFDIR RUNDIR MASQDIR \
             MASQBINDIR FRONT_PATH HELPER_PATH ALLOW_PATH PINS_DIR BROKER_SOCKET
PATH_ARGS = $(foreach v,$(PATH_VARS),$(v)='$($(v))')

# @NAME@ -> its value, for every text file make install installs.
SUBST = sed $(foreach v,$(PATH_VARS),-e 's|@$(v)@|$($(v))|g')
# The manual pages and contrib/portage are written with the default paths
# (doc/man/*.rst, read as they are): those become the configured ones.  The
# most specific first; each default becomes a placeholder that $(SUBST)
# fills, so that a value is never rewritten again.
DOC_SUBST = sed -e 's|/usr/local/lib/cgnetns/masq|@MASQDIR@|g' \
                -e 's|/usr/local/lib/cgnetns/bin|@MASQBINDIR@|g' \
                -e 's|/usr/local/lib/cgnetns|@PKGLIBDIR@|g' \
                -e 's|/usr/local/bin|@BINDIR@|g' \
                -e 's|/usr/local/share|@DATADIR@|g' \
                -e 's|/usr/local|@PREFIX@|g' \
                -e 's|/etc/cgnetns/|@SYSCONFDIR@/cgnetns/|g' \
            | $(SUBST)
