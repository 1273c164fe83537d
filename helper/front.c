/* front.c: cgnetns-exec, the name builds call: a dynamic program without
 * the set-user-ID bit, in front of the set-user-ID helper.
 *
 *   cgnetns-exec [--] PROGRAM [ARG...]
 *   NAME [ARG...]        (a symlink NAME -> cgnetns-exec: PROGRAM is NAME)
 *
 * Why a front: Gentoo's sandbox ptraces every static ELF, and every
 * set-user-ID ELF run by a user (libsandbox/wrapper-funcs/__wrapper_exec.c,
 * sb_check_exec()), strips its LD_PRELOAD, and keeps tracing it across its
 * execs.  The helper is both, so whatever it ran would escape the sandbox's
 * watch (no libsandbox) and pay two tracer stops per system call.  This
 * front is neither: libsandbox stays preloaded in it and in the program it
 * execs, and nothing is traced.
 *
 * Where privilege can be gained it execs the helper, argv and environment
 * unchanged (the set-user-ID path, main.c).  Under no_new_privs -- every
 * default Gentoo build: sandbox sets it -- the set-user-ID bit would gain
 * nothing, so the front is the broker's client itself (client.c).  It holds
 * no privilege and reads nothing it could not read anyway. */
#define _GNU_SOURCE
#include <sys/prctl.h>
#include <unistd.h>

#include "helper.h"

extern char **environ;

int main(int argc, char **argv)
{
	const char *program;
	char **prog_argv;

	program_from_argv(argc, argv, &program, &prog_argv);
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) {
		execve(CGNETNS_HELPER_PATH, argv, environ);
		/* No helper (a partial install): ask the broker as below. */
	}
	run_unprivileged(program, prog_argv, environ);
}
