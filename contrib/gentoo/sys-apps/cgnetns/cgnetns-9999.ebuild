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

# cgnetns-exec is linked statically (no ld.so, no LD_PRELOAD warnings under
# Gentoo's sandbox): it needs static libc.
DEPEND="sys-libs/glibc[static-libs(+)]"
RDEPEND="
	dev-python/pyroute2[${PYTHON_USEDEP}]
	dev-python/psutil[${PYTHON_USEDEP}]
	sys-apps/attr
"
BDEPEND="
	test? (
		dev-python/pytest[${PYTHON_USEDEP}]
		sys-devel/distcc
		sys-devel/icecream
		net-misc/openssh
		sys-apps/iproute2
	)
"


src_compile() {
	distutils-r1_src_compile
	emake -C helper CC="$(tc-getCC)" HOSTCC="$(tc-getCC)" LIBC=glibc \
		PREFIX="${EPREFIX}/usr" SYSCONFDIR="${EPREFIX}/etc"
}

python_test() {
	epytest tests
}

src_install() {
	distutils-r1_src_install

	# cgnetns-exec, the masquerade directories (/usr/lib/cgnetns/masq for
	# compilers, /usr/lib/cgnetns/bin for distcc, pump, icecc) and the
	# default allow list.
	emake -C helper DESTDIR="${D}" LIBC=glibc \
		PREFIX="${EPREFIX}/usr" SYSCONFDIR="${EPREFIX}/etc" \
		PKGLIBDIR="${EPREFIX}/usr/lib/cgnetns" OWNER= \
		MODE="$(usex suid 4711 0711)" INSTALL_STRIP= \
		install

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

	# Broker: systemd socket activation, OpenRC service, /run/cgnetns.
	sed -e "s|@BINDIR@|${EPREFIX}/usr/bin|g" contrib/systemd/cgnetnsd.service \
		> "${T}"/cgnetnsd.service || die
	systemd_dounit contrib/systemd/cgnetnsd.socket "${T}"/cgnetnsd.service
	sed -e "s|@BINDIR@|${EPREFIX}/usr/bin|g" contrib/openrc/cgnetnsd \
		> "${T}"/cgnetnsd.initd || die
	newinitd "${T}"/cgnetnsd.initd cgnetnsd
	dotmpfiles contrib/tmpfiles.d/cgnetns.conf

	# Portage integration: the bashrc snippet and its documentation.
	insinto /usr/share/cgnetns/portage
	doins contrib/portage/bashrc contrib/portage/make.conf.example
	dodoc README.rst contrib/portage/README.rst
}

pkg_postinst() {
	tmpfiles_process cgnetns.conf

	if use suid; then
		elog "cgnetns-exec is installed set-user-ID root."
	else
		elog "USE=-suid: cgnetns-exec is not set-user-ID; builds reach the approved"
		elog "namespace only through the broker (rc-service cgnetnsd start, or"
		elog "systemctl enable --now cgnetnsd.socket)."
	fi
	elog "To let emerge's compiling phases use distcc through cgnetns, add to"
	elog "/etc/portage/bashrc:"
	elog "    source ${EPREFIX}/usr/share/cgnetns/portage/bashrc"
	elog "and run emerge inside a cgnetns build:"
	elog "    cgnetns-run --name emerge -- emerge ..."
	elog "See ${EPREFIX}/usr/share/doc/${PF}/README.rst*."
}
