/* agent.c: cgnetns-exec --broker -- PROGRAM [ARG...]
 *
 * Acts for the broker's peer (doc/BROKER.rst): cgnetnsd, running as root,
 * starts this mode with the client's descriptors at their own numbers, a
 * pidfd of the peer at 1000 (the kernel's word on who connected:
 * SO_PEERPIDFD), the client's cwd at 1001 and the status pipe at 1002.  The
 * decision is the setuid path's own code (allow.c, resolve.c, drop.c,
 * exec.c), made for the process behind the pidfd instead of for itself; only
 * what differs lives here: finding that process, and becoming it -- its
 * cgroup, every namespace but net, root, cwd, umask, ids, groups -- with the
 * approved network namespace instead of its own.
 *
 * Nothing the client sent is believed about who it is: not its pid, ids,
 * cgroup or namespaces.  All of those come from the kernel through the
 * pidfd and /proc.  The client chooses only what it could use anyway: the
 * program (allow-listed, checked), its arguments and environment, its own
 * descriptors and its own cwd (entered with its ids, after the drop). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

#define AGENT_PIDFD  1000
#define AGENT_CWD    1001
#define AGENT_STATUS 1002

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define GROUPS_MAX 65536
#define STATUS_MAX (1024 * 1024) /* /proc/PID/status with 65536 groups */

static char status_buf[STATUS_MAX];
static gid_t peer_groups[GROUPS_MAX];

struct peer {
	uid_t uid[4]; /* real, effective, saved, fs */
	gid_t gid[4];
	int ngroups;
	unsigned umask;
	uint64_t sigblk, sigign, capbnd, capprm, capeff, capinh;
};

static const char *field(const char *buf, const char *key)
{
	size_t k = strlen(key);
	for (const char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, key, k) == 0)
			return p + k;
	return NULL;
}

static int parse_ids(const char *p, unsigned *out, int n)
{
	for (int i = 0; i < n; i++) {
		char *end;
		while (*p == ' ' || *p == '\t')
			p++;
		unsigned long v = strtoul(p, &end, 10);
		if (end == p || v > 0xffffffffUL)
			return -1;
		out[i] = (unsigned)v;
		p = end;
	}
	return 0;
}

static uint64_t hex_field(const char *buf, const char *key)
{
	const char *p = field(buf, key);
	if (!p)
		die(EXIT_REFUSE, "no %s in the peer's /proc status", key);
	return strtoull(p, NULL, 16);
}

/* The peer's ids, groups, umask, signal state and capabilities, as the
 * kernel shows them to a reader in this process's user namespace. */
static void read_peer(int proc_fd, struct peer *pe)
{
	int fd = openat(proc_fd, "status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open the peer's /proc status");
	ssize_t n = read_full(fd, status_buf, sizeof status_buf - 1);
	close_quietly(fd);
	if (n < 0)
		die_with_error(EXIT_REFUSE, "cannot read the peer's /proc status");
	if ((size_t)n >= sizeof status_buf - 1)
		die(EXIT_REFUSE, "the peer's /proc status is too long");
	status_buf[n] = '\0';

	const char *p;
	if (!(p = field(status_buf, "Uid:")) || parse_ids(p, pe->uid, 4) < 0 ||
	    !(p = field(status_buf, "Gid:")) || parse_ids(p, pe->gid, 4) < 0)
		die(EXIT_REFUSE, "cannot parse the peer's ids");
	pe->ngroups = 0;
	if (!(p = field(status_buf, "Groups:")))
		die(EXIT_REFUSE, "no Groups in the peer's /proc status");
	for (;;) {
		char *end;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p == '\n' || *p == '\0')
			break;
		unsigned long v = strtoul(p, &end, 10);
		if (end == p || v > 0xffffffffUL || pe->ngroups == GROUPS_MAX)
			die(EXIT_REFUSE, "cannot parse the peer's groups");
		peer_groups[pe->ngroups++] = (gid_t)v;
		p = end;
	}
	if (!(p = field(status_buf, "Umask:")))
		die(EXIT_REFUSE, "no Umask in the peer's /proc status");
	pe->umask = (unsigned)strtoul(p, NULL, 8) & 0777;
	pe->sigblk = hex_field(status_buf, "SigBlk:");
	pe->sigign = hex_field(status_buf, "SigIgn:");
	pe->capbnd = hex_field(status_buf, "CapBnd:");
	pe->capprm = hex_field(status_buf, "CapPrm:");
	pe->capeff = hex_field(status_buf, "CapEff:");
	pe->capinh = hex_field(status_buf, "CapInh:");
}

static void take_limits(int proc_fd)
{
	char buf[4096];
	int fd = openat(proc_fd, "limits", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open the peer's limits");
	ssize_t n = read_full(fd, buf, sizeof buf - 1);
	close_quietly(fd);
	if (n < 0 || (size_t)n >= sizeof buf - 1)
		die(EXIT_REFUSE, "cannot read the peer's limits");
	buf[n] = '\0';
	char *line = strchr(buf, '\n'); /* skip the header */
	for (int res = 0; line && res < RLIM_NLIMITS; res++) {
		line++;
		char soft[24], hard[24];
		if (strlen(line) < 26 || sscanf(line + 26, "%23s %23s", soft, hard) != 2)
			break;
		struct rlimit rl;
		rl.rlim_cur = strcmp(soft, "unlimited") ? strtoull(soft, NULL, 10) : RLIM_INFINITY;
		rl.rlim_max = strcmp(hard, "unlimited") ? strtoull(hard, NULL, 10) : RLIM_INFINITY;
		if (setrlimit(res, &rl) < 0) {
			struct rlimit own;
			if (getrlimit(res, &own) == 0) {
				if (rl.rlim_max > own.rlim_max)
					rl.rlim_max = own.rlim_max;
				if (rl.rlim_cur > rl.rlim_max)
					rl.rlim_cur = rl.rlim_max;
				setrlimit(res, &rl);
			}
		}
		line = strchr(line, '\n');
	}
}

/* The pid of the pidfd's process in this pid namespace (-1: it has exited). */
static pid_t pidfd_pid(int pidfd)
{
	char buf[4096];
	char path[64];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot read the peer's pidfd");
	ssize_t n = read_full(fd, buf, sizeof buf - 1);
	close_quietly(fd);
	if (n < 0 || (size_t)n >= sizeof buf - 1)
		die(EXIT_REFUSE, "cannot read the peer's pidfd");
	buf[n] = '\0';
	const char *p = field(buf, "Pid:");
	if (!p)
		die(EXIT_REFUSE, "fd %d is not a pidfd", pidfd);
	return (pid_t)strtol(p, NULL, 10);
}

/* The pidfd's process has not been reaped: its pid cannot have been reused,
 * so what was opened by that pid (/proc/PID) was the peer's. */
static void peer_alive(int pidfd)
{
	if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0)
		die_with_error(EXIT_REFUSE, "the peer has gone");
}

static void ns_ident_of(int dirfd, const char *name, struct stat *st)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, st) < 0)
		die_with_error(EXIT_REFUSE, "cannot open namespace %s", name);
	close_quietly(fd);
}

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Signals that reach the agent after the drop (from the broker: the
 * client's "sig N") go on to the program. */
static volatile pid_t child_pid;
static volatile sig_atomic_t pending_sig;

static void forward(int signo)
{
	if (child_pid > 0)
		kill(child_pid, signo);
	else
		pending_sig = signo;
}

static const int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGCONT,
				 SIGUSR1, SIGUSR2, SIGWINCH };

static void status_line(const char *line)
{
	size_t len = strlen(line);
	if (write(AGENT_STATUS, line, len) != (ssize_t)len)
		_exit(EXIT_REFUSE); /* the broker is gone */
}

void agent_main(int argc, char **argv)
{
	struct program prog;
	struct subject s;
	struct verdict v;
	struct peer pe;
	struct stat st, st2;
	int cg_fd = -1;

	/* Only cgnetnsd, running as root, starts this mode; it trusts the
	 * descriptors 1000-1002 its parent placed.  A set-user-ID exec gives
	 * euid 0 but keeps the caller's real uid and sets AT_SECURE, so neither
	 * a user nor a process in a user namespace can reach what follows
	 * through the installed helper's set-user-ID bit. */
	if (getuid() != 0 || geteuid() != 0 || getauxval(AT_SECURE))
		die(EXIT_REFUSE, "--broker is the mode cgnetnsd runs as real root; "
		    "it is not for users");

	/* A closed fd 0-2 of the client: keep the number taken (O_CLOEXEC: the
	 * program sees it closed, as the client had it), so that nothing this
	 * process opens becomes fd 2 and receives its messages. */
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0) {
			int n = open("/dev/null", O_RDWR | O_CLOEXEC);
			if (n != fd)
				_exit(EXIT_REFUSE);
		}
	if (fstat(AGENT_STATUS, &st) < 0 || !S_ISFIFO(st.st_mode))
		die(EXIT_REFUSE, "--broker: fd %d is not the status pipe", AGENT_STATUS);
	set_verdict_fd(AGENT_STATUS, "refuse");
	if (fcntl(AGENT_PIDFD, F_GETFD) < 0 || fstat(AGENT_CWD, &st) < 0 || !S_ISDIR(st.st_mode))
		die(EXIT_REFUSE, "--broker: fds %d (pidfd) and %d (cwd) are not in place",
		    AGENT_PIDFD, AGENT_CWD);

	/* No core dump, no ptrace by the peer once the ids are its own. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	/* The broker's signal state is not the peer's: start from the defaults
	 * (the program gets the peer's own, below), and leave the broker's
	 * session and process group (its terminal's signals are not ours). */
	for (int sig = 1; sig < 65; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			signal(sig, SIG_DFL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setsid();

	if (argc < 4 || strcmp(argv[2], "--") != 0 || !argv[3][0])
		die(EXIT_REFUSE, "usage: " SELF_NAME " --broker -- PROGRAM [ARG...]");
	const char *program = argv[3];
	char **prog_argv = argv + 3;

	/* The subject: the process behind the pidfd.  /proc/PID is opened by
	 * number, and the pidfd checked alive afterwards: then the number was
	 * not reused in between, and the directory fd stays the peer's (it
	 * never shows another process, only errors once the peer is gone). */
	s.pid = pidfd_pid(AGENT_PIDFD);
	if (s.pid <= 0)
		die(EXIT_REFUSE, "the peer has gone");
	char path[64];
	snprintf(path, sizeof path, "/proc/%d", (int)s.pid);
	s.proc_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s.proc_fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open %s", path);
	if (!fd_on_fs(s.proc_fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc is not procfs");
	peer_alive(AGENT_PIDFD);
	s.cg_out = &cg_fd;

	/* The same checks, in the same order, as the set-user-ID path. */
	allow_check_program(program, 1, 1, &prog);
	resolve(&s, &v);
	/* After reading its cgroup: still the same process (PID reuse). */
	peer_alive(AGENT_PIDFD);
	if (v.kind != VERDICT_JOIN) {
		/* In no build, or already in its namespace: the client runs the
		 * program itself, unchanged and without privilege. */
		char line[CG_PATH_MAX + 8];
		snprintf(line, sizeof line, "pass %s\n", prog.path);
		status_line(line);
		_exit(0);
	}

	/* Everything of the peer that is read by path, before this process's
	 * own mount namespace changes: its state, its root, its namespaces. */
	read_peer(s.proc_fd, &pe);
	int root_fd = openat(s.proc_fd, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open the peer's root");
	ns_ident_of(s.proc_fd, "ns/user", &st);
	ns_ident_of(AT_FDCWD, "/proc/self/ns/user", &st2);
	int join_user = !same_file(&st, &st2);
	ns_ident_of(s.proc_fd, "ns/mnt", &st);
	ns_ident_of(AT_FDCWD, "/proc/self/ns/mnt", &st2);
	struct stat rst, own_rst;
	if (fstat(root_fd, &rst) < 0 || stat("/", &own_rst) < 0)
		die_with_error(EXIT_REFUSE, "cannot stat the root directories");
	/* Its resource limits, from /proc/PID/limits (one line per resource,
	 * in RLIMIT_* order).  Lowering always works; a limit above the
	 * broker's own hard limit cannot be raised without CAP_SYS_RESOURCE:
	 * the program then gets the lower one (never more than the peer). */
	take_limits(s.proc_fd);
	/* A "#!" script is run by its path (exec.c); the path was checked here,
	 * in this mount namespace and root: only there does it name the same. */
	exec_path_fallback = same_file(&st, &st2) && same_file(&rst, &own_rst);
	peer_alive(AGENT_PIDFD);

	/* 1. The peer's cgroup (the directory resolve() checked): the program
	 * belongs to the build, and the build's end kills it.  Root may move a
	 * process anywhere; done first, while in the initial namespaces. */
	int procs = openat(cg_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
	char pidline[32];
	int pl = snprintf(pidline, sizeof pidline, "%d\n", (int)getpid());
	if (procs < 0 || write(procs, pidline, (size_t)pl) != pl)
		die_with_error(EXIT_REFUSE, "cannot join the peer's cgroup");
	close_quietly(procs);
	close_quietly(cg_fd);

	/* 2. The approved network namespace, through the verified pin, while
	 * still root in the initial user namespace (which owns it). */
	if (setns(v.pin_fd, CLONE_NEWNET) < 0)
		die_with_error(EXIT_REFUSE, "cannot join the approved network namespace of %s",
			       v.tag.id);
	close_quietly(v.pin_fd);

	/* 3. The peer's supplementary groups, set here in the initial user
	 * namespace where its gids are plain numbers; inside its user
	 * namespace setgroups() may be denied or the gids unmapped.  drop.c
	 * verifies them below, as the peer sees them. */
	if (setgroups((size_t)pe.ngroups, peer_groups) < 0)
		die_with_error(EXIT_REFUSE, "setgroups");

	/* 4. Every other namespace of the peer, at once, by its pidfd: mount,
	 * ipc, uts, cgroup, pid (for the child forked below), and its user
	 * namespace where it differs (joining it gives this process its
	 * capabilities there, enough for the steps up to the drop).  Not net. */
	int flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP | CLONE_NEWPID;
	if (join_user)
		flags |= CLONE_NEWUSER;
	if (setns(AGENT_PIDFD, flags) < 0)
		die_with_error(EXIT_REFUSE, "cannot enter the peer's namespaces");

	/* 5. Its root directory (setns(CLONE_NEWNS) reset ours to the mount
	 * namespace's root); its cwd follows after the drop. */
	if (fchdir(root_fd) < 0 || chroot(".") < 0)
		die_with_error(EXIT_REFUSE, "cannot enter the peer's root directory");
	close_quietly(root_fd);

	/* 6. Ids as the peer sees them: in its user namespace they may be other
	 * numbers, which /proc shows to a reader in that namespace. */
	if (join_user)
		read_peer(s.proc_fd, &pe);
	peer_alive(AGENT_PIDFD);
	close_quietly(s.proc_fd);
	umask((mode_t)pe.umask);

	/* 7. The drop, drop.c's (irrevocable, verified).  Real = effective =
	 * saved = the peer's effective ids: what SO_PEERCRED reports and what
	 * its files and permissions are checked with.  A set-id peer's other
	 * ids are not handed on (the setuid path runs with real ids too). */
	struct caller c = {
		.ruid = pe.uid[1], .euid = pe.uid[1], .suid = pe.uid[1],
		.rgid = pe.gid[1], .egid = pe.gid[1], .sgid = pe.gid[1],
		.ngroups = pe.ngroups, .groups = peer_groups, .groups_preset = 1,
	};
	drop_privileges(&c);
	if (c.ruid == 0) {
		/* Root of the peer's user namespace (or a root peer): no more
		 * capabilities than the peer has.  The bounding set is what a
		 * root exec gets; the others as the peer has them. */
		for (int cap = 0; cap < 64; cap++)
			if (!((pe.capbnd >> cap) & 1) &&
			    prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
				die_with_error(EXIT_REFUSE, "cannot drop capability %d", cap);
		prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
		struct cg_cap_header h = { CG_CAP_VERSION_3, 0 };
		struct cg_cap_data d[2] = {
			{ (uint32_t)pe.capeff, (uint32_t)pe.capprm, (uint32_t)pe.capinh },
			{ (uint32_t)(pe.capeff >> 32), (uint32_t)(pe.capprm >> 32),
			  (uint32_t)(pe.capinh >> 32) },
		};
		if (syscall(SYS_capset, &h, d) < 0)
			die_with_error(EXIT_REFUSE, "cannot set the peer's capabilities");
	}
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	/* 8. Its cwd, entered with its ids: a directory it cannot search is
	 * refused by the kernel, as it would be for the peer. */
	if (fchdir(AGENT_CWD) < 0)
		die_with_error(EXIT_REFUSE, "cannot enter the caller's working directory");

	/* 9. no_new_privs, as Gentoo's sandbox has it: nothing the program runs
	 * gains privilege (inherited by the child). */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die_with_error(EXIT_REFUSE, "cannot set no_new_privs");

	/* Forward what the broker sends (the client's signals) to the program. */
	for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = forward;
		sa.sa_flags = SA_RESTART;
		sigemptyset(&sa.sa_mask);
		sigaction(forwarded[i], &sa, NULL);
	}
	int alive[2];
	if (pipe2(alive, O_CLOEXEC) < 0)
		die_with_error(EXIT_REFUSE, "pipe");

	status_line("start\n");
	set_verdict_fd(AGENT_STATUS, "exit");

	/* 10. Fork: the child is created in the peer's pid namespace. */
	sigset_t all, old;
	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, &old);
	pid_t pid = fork();
	if (pid < 0)
		die_with_error(EXIT_REFUSE, "fork");
	if (pid == 0) {
		/* The program dies with the agent (which the broker kills when the
		 * client goes away).  Set after the drop (a credential change
		 * clears it); the pipe tells whether the parent died before. */
		close(alive[1]);
		set_verdict_fd(-1, NULL);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
			die_with_error(EXIT_REFUSE, "PR_SET_PDEATHSIG");
		struct pollfd pf = { alive[0], POLLIN, 0 };
		if (poll(&pf, 1, 0) != 0)
			_exit(EXIT_REFUSE); /* the parent has gone */
		close(alive[0]);
		/* The peer's signal state: ignored set and mask. */
		for (int sig = 1; sig < 65; sig++)
			if (sig != SIGKILL && sig != SIGSTOP)
				signal(sig, ((pe.sigign >> (sig - 1)) & 1) ? SIG_IGN : SIG_DFL);
		sigset_t mask;
		sigemptyset(&mask);
		for (int sig = 1; sig < 65; sig++)
			if ((pe.sigblk >> (sig - 1)) & 1)
				sigaddset(&mask, sig);
		close(AGENT_PIDFD);
		close(AGENT_STATUS);
		close(AGENT_CWD);
		sigprocmask(SIG_SETMASK, &mask, NULL);
		exec_program(&prog, prog_argv, env_for_program());
	}
	close(alive[0]);
	child_pid = pid;
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (pending_sig)
		kill(pid, pending_sig);

	/* Hold none of the client's descriptors while waiting: a reader of a
	 * pipe the program writes must see end of file when the program ends
	 * (or closes it), not when this process does. */
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	for (int fd = 0; fd < AGENT_PIDFD; fd++) {
		if (fd == null || fd == alive[1])
			continue;
		if (fd <= 2 && null >= 0)
			dup3(null, fd, O_CLOEXEC);
		else
			close(fd);
	}
	close(AGENT_PIDFD);
	close(AGENT_CWD);

	int wst;
	while (waitpid(pid, &wst, 0) < 0)
		if (errno != EINTR)
			die_with_error(EXIT_REFUSE, "waitpid");
	char line[32];
	if (WIFSIGNALED(wst))
		snprintf(line, sizeof line, "signal %d\n", WTERMSIG(wst));
	else
		snprintf(line, sizeof line, "exit %d\n", WEXITSTATUS(wst));
	status_line(line);
	_exit(0);
}
