/* cgnetns-exec: run an allow-listed program in the network namespace that
 * root approved for the caller's build.
 *
 *   cgnetns-helper [--] PROGRAM [ARG...]   (exec'd by the front, front.c)
 *   NAME [ARG...]     (argv[0] other than cgnetns-exec or cgnetns-helper: a
 *                      masquerade, PROGRAM is NAME)
 *   cgnetns-helper --supervise             (by cgnetnsd, as real root)
 *   cgnetns-helper --fork-server           (by cgnetnsd, as real root)
 *
 * Installed set-user-ID root, static.  The order below is the whole privileged path;
 * each step says why it is there.  Nothing of the environment, and nothing
 * of argv beyond the program's name, is read before the privilege drop. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

/* Long on purpose: the whole privileged path, in order, in one place, so
 * that it can be read as an attacker would in one sitting (helper/README). */
int main(int argc, char **argv)
{
	struct caller c;
	struct program prog;
	const char *program;
	char **prog_argv;

	/* Odd states, before anything else: no name to run by. */
	if (argc < 1 || !argv[0] || !argv[0][0])
		die(EXIT_REFUSE, "refusing to run with an empty argv[0]");

	/* The broker's side of one request: cgnetns-helper --supervise, started
	 * by cgnetnsd as real root with the connection on fd 3.
	 * supervise_main() refuses unless the real and effective uids are 0
	 * and the exec was not set-user-ID (AT_SECURE), so the set-user-ID bit
	 * can never reach that mode.  Through a masquerade symlink
	 * "--supervise" is only the program's own argument. */
	if (argc > 1 && strcmp(argv[1], "--supervise") == 0 && is_self_name(argv[0]))
		supervise_main(argc, argv);
	/* The same, as a fork server (spawner.c): one --supervise child per
	 * connection cgnetnsd hands over, without an exec each.  The same
	 * real-root check comes first. */
	if (argc > 1 && strcmp(argv[1], "--fork-server") == 0 && is_self_name(argv[0]))
		spawner_main(argc, argv);

	caller_get(&c);
	/* Set-user-ID to anyone but root is an installation mistake, and a
	 * set-group-ID exec would leave an effective gid this helper does not
	 * know how to give back: refuse both rather than guess. */
	if (c.euid != 0 && c.euid != c.ruid)
		die(EXIT_REFUSE, "installed set-user-ID to uid %u, not root", (unsigned)c.euid);
	if (c.egid != c.rgid)
		die(EXIT_REFUSE, "refusing to run with effective gid %u != real gid %u",
		    (unsigned)c.egid, (unsigned)c.rgid);

	/* In secure mode (set-user-ID exec) libc has opened /dev/null on any of
	 * fds 0-2 the caller closed.  Check it: otherwise a file the helper
	 * opens could become fd 2 and receive its messages. */
	if (getauxval(AT_SECURE)) {
		for (int fd = 0; fd <= 2; fd++)
			if (fcntl(fd, F_GETFD) < 0)
				_exit(EXIT_REFUSE);
	}

	/* PROGRAM: the basename of argv[0] when called through a masquerade
	 * symlink (argv passed unchanged), else the first argument. */
	program_from_argv(argc, argv, &program, &prog_argv);

	/* elevated: the set-user-ID bit took effect (what must be given back).
	 * privileged: it is worth something here (see have_privilege()). */
	int elevated = c.euid != c.ruid;
	int privileged = have_privilege(c.euid);
	if (privileged) {
		/* No core dump and no /proc/PID access by the caller while
		 * privileged, also where fs.suid_dumpable is not 0.  The exec of
		 * the program resets it. */
		prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	}

	if (!privileged) {
		/* Give back what a set-user-ID exec without privilege gave (root
		 * without capabilities), then ask the broker (client.c): it
		 * decides with the same code, as real root, for this process. */
		if (elevated) {
			env_prepare();
			drop_privileges(&c);
		}
		run_unprivileged(program, prog_argv, env_for_program());
	}

	/* The allow list first: a program that is not on it is refused (126)
	 * whatever else is true, and nothing is run. */
	allow_check_program(program, privileged, 1, &prog);

	struct subject self;
	struct verdict v;

	subject_self(&self);
	resolve(&self, &v);
	close_quietly(self.proc_fd);
	if (v.kind == VERDICT_JOIN) {
		/* The one privileged act: enter the namespace root pinned and
		 * the tag names, through the verified pin fd. */
		if (setns(v.pin_fd, CLONE_NEWNET) < 0)
			die_with_error(EXIT_REFUSE,
				       "cannot join the approved network namespace of %s",
				       v.tag.id);
		close_quietly(v.pin_fd);
	}

	/* For good, and checked, before anything of the caller's is used. */
	env_prepare();
	drop_privileges(&c);

	exec_program(&prog, prog_argv, env_for_program());
}
