/* cgnetns-exec: run an allow-listed program in the network namespace that
 * root approved for the caller's build.
 *
 *   cgnetns-exec [--] PROGRAM [ARG...]
 *   NAME [ARG...]        (a symlink NAME -> cgnetns-exec: PROGRAM is NAME)
 *
 * Installed set-user-ID root.  The order below is the whole privileged path;
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

#define USAGE "usage: " SELF_NAME " [--] PROGRAM [ARG...]"

/* Without privilege the tag cannot be read (trusted.* is invisible without
 * CAP_SYS_ADMIN), so whether the caller is in a build cannot be told here:
 * the broker is asked (client.c).  When none answers, the program runs
 * unchanged -- no more than the caller could do itself -- and one line says
 * why it has no network.  That line is left out where no build can exist:
 * no pins directory means no build on this host (cgnetns-run makes it
 * before its first build), so the caller is provably in none. */
static void no_broker_notice(const char *program, int connect_errno)
{
	struct stat st;
	const char *why = "not set-user-ID root, a nosuid mount or a ptraced exec";
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)
		why = "no_new_privs";
	else if (!in_initial_userns())
		why = "a user namespace";
	if (lstat(CGNETNS_PINS_DIR, &st) == 0 || errno == EACCES)
		note("no privilege (%s) and no broker at %s (%s): "
		     "%.200s runs without network (in the current network namespace)",
		     why, CGNETNS_BROKER_SOCKET, errno_name(connect_errno), program);
}

int main(int argc, char **argv)
{
	struct caller c;
	struct program prog;
	const char *program;
	char **prog_argv;

	/* Odd states, before anything else.  Kernels before 5.18 allowed
	 * argc == 0; newer ones pass an empty argv[0].  Either way there is no
	 * name to run by, and the masquerade rule below needs one. */
	if (argc < 1 || !argv[0] || !argv[0][0])
		die(EXIT_REFUSE, "refusing to run with an empty argv[0]");

	/* The broker's agent: cgnetns-exec --broker -- PROGRAM [ARG...], started
	 * by cgnetnsd as real root.  agent_main() refuses unless the real and
	 * effective uids are 0 and the exec was not set-user-ID (AT_SECURE), so
	 * the set-user-ID bit can never reach that mode.  Through a masquerade
	 * symlink "--broker" is only the program's own argument. */
	if (argc > 1 && strcmp(argv[1], "--broker") == 0 &&
	    strcmp(base_name(argv[0]), SELF_NAME) == 0)
		agent_main(argc, argv);

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
	if (strcmp(base_name(argv[0]), SELF_NAME) != 0) {
		program = base_name(argv[0]);
		prog_argv = argv;
	} else {
		int i = 1;
		if (i < argc && strcmp(argv[i], "--") == 0)
			i++;
		else if (i < argc && argv[i][0] == '-')
			die(EXIT_REFUSE, "unknown option %.100s; " USAGE, argv[i]);
		if (i >= argc)
			die(EXIT_REFUSE, USAGE);
		program = argv[i];
		prog_argv = argv + i;
	}

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
		 * without capabilities), then ask the broker: it decides with
		 * the same code, as real root, for this process.  It returns only
		 * when no broker answers. */
		char **envp;
		if (elevated) {
			env_prepare();
			drop_privileges(&c);
		}
		envp = env_for_program();
		broker_client(program, prog_argv, envp);
		int connect_errno = errno;
		allow_check_program(program, 0, in_initial_userns(), &prog);
		no_broker_notice(program, connect_errno);
		exec_program(&prog, prog_argv, envp);
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
