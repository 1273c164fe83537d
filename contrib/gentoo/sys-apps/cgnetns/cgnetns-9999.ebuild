# Copyright 2026 cgnetns authors
# Distributed under the terms of the GNU General Public License v2

EAPI=8

DISTUTILS_USE_PEP517=setuptools
PYTHON_COMPAT=( python3_{10..13} )

inherit distutils-r1 git-r3 systemd tmpfiles toolchain-funcs

DESCRIPTION="Let allow-listed programs (distcc, icecc) in a network-sandboxed build reach the network"
HOMEPAGE="https://github.com/cgnetns/cgnetns"
# Point EGIT_REPO_URI at your clone (e.g. in /etc/portage/env) when it lives elsewhere.
EGIT_REPO_URI="https://github.com/cgnetns/cgnetns.git"

LICENSE="GPL-2+"
SLOT="0"
IUSE="+suid test"
RESTRICT="!test? ( test )"
# The tests need root, a real kernel and a running distccd/sshd/iceccd.
PROPERTIES="test? ( test_privileged )"

# cgnetns-exec's helper is linked statically: it needs static libc.
DEPEND="sys-libs/glibc[static-libs(+)]"
RDEPEND="
	dev-python/pyroute2[${PYTHON_USEDEP}]
	dev-python/psutil[${PYTHON_USEDEP}]
	sys-apps/attr
"
BDEPEND="
	dev-python/docutils
	test? (
		dev-python/pytest[${PYTHON_USEDEP}]
		sys-devel/distcc
		sys-devel/icecream
		net-misc/openssh
		sys-apps/iproute2
	)
"

# Every path, as paths.mk names them: compiled into the helper and the front,
# written into the Python package (cgnetns/_paths.py), substituted into the
# units, scripts, manual pages and Portage files.
cgnetns_emake() {
	emake PREFIX="${EPREFIX}/usr" SYSCONFDIR="${EPREFIX}/etc" \
		LIBDIR="${EPREFIX}/usr/lib/cgnetns" "$@"
}

src_compile() {
	cgnetns_emake python-paths
	distutils-r1_src_compile
	cgnetns_emake -C helper CC="$(tc-getCC)" HOSTCC="$(tc-getCC)" LIBC=glibc
	cgnetns_emake -C doc
}

python_test() {
	epytest tests
}

src_install() {
	distutils-r1_src_install

	# cgnetns-exec, the set-user-ID helper, the masquerade directories
	# (/usr/lib/cgnetns/masq for compilers, /usr/lib/cgnetns/bin for distcc,
	# pump, icecc).
	cgnetns_emake -C helper DESTDIR="${D}" LIBC=glibc OWNER= \
		MODE="$(usex suid 4711 0711)" INSTALL_STRIP= install

	# The broker's units and init script, tmpfiles.d, and the Portage files:
	# the patch (/usr/share/cgnetns/portage/patches), the bashrc snippet,
	# make.conf.example and README.rst.
	cgnetns_emake -C contrib DESTDIR="${D}" \
		SYSTEMDUNITDIR="$(systemd_get_systemunitdir)" \
		TMPFILESDIR="${EPREFIX}/usr/lib/tmpfiles.d" \
		OPENRCDIR="${EPREFIX}/etc/init.d" install
	cgnetns_emake -C doc DESTDIR="${D}" install

	# Allow list: one canonical path a line; Gentoo's distcc and icecream.
	insinto /etc/cgnetns
	newins - allow <<-EOT
		# cgnetns allow list: programs that cgnetns-exec may start in a build's
		# approved network namespace.  One absolute, canonical path a line.
		# The file and each program must be root-owned, not group/other writable.
		${EPREFIX}/usr/bin/distcc
		${EPREFIX}/usr/bin/pump
		${EPREFIX}/usr/bin/icecc
	EOT

	dodoc README.rst
	newdoc contrib/portage/README.rst README.portage.rst
}

pkg_postinst() {
	tmpfiles_process cgnetns.conf

	if use suid; then
		elog "cgnetns-exec's helper is installed set-user-ID root."
	else
		elog "USE=-suid: the helper is not set-user-ID; builds reach the approved"
		elog "namespace only through the broker."
	fi
	elog "Start the broker: rc-service cgnetnsd start (OpenRC), or"
	elog "systemctl enable --now cgnetnsd.socket (systemd)."
	elog
	elog "To let emerge make its own cgnetns build (FEATURES=cgnetns), patch Portage:"
	elog "    mkdir -p ${EROOT}/etc/portage/patches/sys-apps/portage"
	elog "    cp ${EROOT}/usr/share/cgnetns/portage/patches/portage-cgnetns.patch \\"
	elog "       ${EROOT}/etc/portage/patches/sys-apps/portage/"
	elog "    emerge --oneshot sys-apps/portage"
	elog "and set in make.conf:"
	elog "    FEATURES=\"cgnetns distcc\""
	elog "    DISTCC_FALLBACK=\"0\""
	elog
	elog "Without the patch: add to /etc/portage/bashrc"
	elog "    source ${EPREFIX}/usr/share/cgnetns/portage/bashrc"
	elog "and run emerge inside a cgnetns build:"
	elog "    cgnetns-run --name emerge -- emerge ..."
	elog "See ${EPREFIX}/usr/share/doc/${PF}/README.portage.rst*."
}
