/* supervise.c: cgnetns-helper --supervise [--peercred], the broker's side of
 * one request (doc/BROKER.rst).
 *
 * cgnetnsd, as real root, accepts a connection and starts this mode with it
 * on fd 3.  The decision is the set-user-ID path's own code (allow.c,
 * resolve.c), made for the process that connected instead of for itself.
 * What happens for a "join" is not to act as the caller: this process only
 * becomes the supervisor that mints the caller's sockets (notify.c), and the
 * caller's own process runs the program.
 *
 * Who the caller is comes from the kernel's record of the connect() only:
 * SO_PEERCRED (pid, uid, gid at connect), SO_PEERGROUPS (groups at connect)
 * and SO_PEERPIDFD (the very process that connected; Linux 6.5).  Nothing the
 * client sends is believed, and no credential is read later from /proc
 * (a peer may exec a set-user-ID program after connecting).  The client
 * chooses only the program's name, checked against the allow list.
 *
 * Every phase runs under one deadline (alarm, BROKER_HANDSHAKE_SECONDS): a
 * client that stalls costs one process for that long, counted against its
 * uid by cgnetnsd.  Nothing is written to a descriptor of the caller's; the
 * answers go on the connection, without blocking, and the log to fd 2. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

#define CONN 3
#define GROUPS_MAX 65536

static gid_t peer_groups[GROUPS_MAX];
static struct supervision sv;

struct peer {
	struct {
		pid_t pid;
		uid_t uid;
		gid_t gid;
	} cred;
	int ngroups;
	int pidfd;
};

static void say(const char *line)
{
	size_t n = strlen(line);
	if (send(CONN, line, n, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)n)
		_exit(EXIT_REFUSE); /* the client has gone, or does not read */
}

/* Field 22 of /proc/<dir>/stat: the start time in clock ticks after boot. */
static unsigned long long start_time(int dirfd, const char *name)
{
	char buf[1024];
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ~0ULL;
	ssize_t n = read_full(fd, buf, sizeof buf - 1);
	close_quietly(fd);
	if (n <= 0 || (size_t)n >= sizeof buf - 1)
		return ~0ULL;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	for (int field = 2; p && field < 22; field++)
		p = strchr(p + 1, ' ');
	return p ? strtoull(p + 1, NULL, 10) : ~0ULL;
}

static void peer_identify(struct peer *pe, int use_pidfd)
{
	socklen_t len = sizeof pe->cred;
	if (getsockopt(CONN, SOL_SOCKET, SO_PEERCRED, &pe->cred, &len) < 0 ||
	    len != sizeof pe->cred || pe->cred.pid <= 0)
		die_with_error(EXIT_REFUSE, "cannot read the peer's credentials");
	len = sizeof peer_groups;
	if (getsockopt(CONN, SOL_SOCKET, CG_SO_PEERGROUPS, peer_groups, &len) < 0)
		die_with_error(EXIT_REFUSE, "cannot read the peer's groups");
	pe->ngroups = (int)(len / sizeof(gid_t));

	len = sizeof pe->pidfd;
	if (use_pidfd && getsockopt(CONN, SOL_SOCKET, CG_SO_PEERPIDFD, &pe->pidfd, &len) == 0)
		return;
	if (use_pidfd && errno != ENOPROTOOPT && errno != EINVAL)
		die_with_error(EXIT_REFUSE, "cannot read the peer's pidfd");
	/* Before Linux 6.5: a pidfd by the pid of the connect().  That pid may
	 * have been reused since; a process that started after this one cannot
	 * be the peer (it connected before cgnetnsd accepted and started us),
	 * so such a one is refused.  A reuse before we started is not caught:
	 * this narrows the window, it does not close it. */
	pe->pidfd = (int)syscall(SYS_pidfd_open, pe->cred.pid, 0);
	if (pe->pidfd < 0)
		die_with_error(EXIT_REFUSE, "the peer has gone");
	char name[32];
	snprintf(name, sizeof name, "/proc/%d/stat", (int)pe->cred.pid);
	unsigned long long peer_start = start_time(AT_FDCWD, name);
	if (peer_start == ~0ULL || peer_start > start_time(AT_FDCWD, "/proc/self/stat"))
		die(EXIT_REFUSE, "the peer has gone (its pid names a newer process)");
}

/* The pidfd's process has not been reaped: its pid cannot have been reused,
 * so what was opened by that pid (/proc/PID) before this was the peer's.
 * And it has not exited: a zombie has no namespaces left to judge, and the
 * one asking now is then some other holder of the connection. */
static void peer_alive(const struct peer *pe, int proc_fd)
{
	char buf[512];
	if (syscall(SYS_pidfd_send_signal, pe->pidfd, 0, NULL, 0) < 0)
		die_with_error(EXIT_REFUSE, "the peer has gone");
	int fd = openat(proc_fd, "stat", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
	close_quietly(fd);
	buf[n < 0 ? 0 : n] = '\0';
	const char *p = strrchr(buf, ')');
	if (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
		die(EXIT_REFUSE, "the peer has gone (it exited after connecting)");
}

/* The request: "CGN2", flags, length, name.  Returns the program's name. */
static const char *read_request(void)
{
	static char buf[BROKER_HEADER_SIZE + BROKER_NAME_MAX];
	size_t got = 0, want = BROKER_HEADER_SIZE;
	uint32_t flags, n;
	for (;;) {
		/* recv(), not recvmsg(): descriptors a client sends with its
		 * request are discarded by the kernel, never received. */
		ssize_t r = recv(CONN, buf + got, want - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		/* Closed before its first byte: no request, nothing to refuse or
		 * log (cgnetns-run connects and closes to see whether a broker
		 * answers, once a build). */
		if (r == 0 && got == 0)
			_exit(EXIT_REFUSE);
		if (r <= 0)
			die(EXIT_REFUSE, "client went away before its request was complete");
		got += (size_t)r;
		if (got < want)
			continue;
		if (want > BROKER_HEADER_SIZE)
			break;
		memcpy(&flags, buf + 4, 4);
		memcpy(&n, buf + 8, 4);
		if (memcmp(buf, CGNETNS_BROKER_MAGIC, 4) != 0 || flags != 0)
			die(EXIT_REFUSE, "bad request (magic or flags): this cgnetns-exec does not "
			    "match the broker; reinstall both");
		if (n == 0 || n >= BROKER_NAME_MAX)
			die(EXIT_REFUSE, "bad request: program name of %u bytes", n);
		want = BROKER_HEADER_SIZE + n;
	}
	buf[want] = '\0';
	if (strlen(buf + BROKER_HEADER_SIZE) != want - BROKER_HEADER_SIZE)
		die(EXIT_REFUSE, "bad request: NUL in the program name");
	return buf + BROKER_HEADER_SIZE;
}

/* The supervisor: in the caller's build cgroup (created there), then in
 * the approved namespace, then the caller. */
__attribute__((noreturn))
static void become_supervisor(const struct peer *pe, const struct verdict *v, int proc_fd)
{
	alarm(BROKER_HANDSHAKE_SECONDS); /* alarms are not inherited */

	struct caller c = {
		.ruid = pe->cred.uid, .euid = pe->cred.uid, .suid = pe->cred.uid,
		.rgid = pe->cred.gid, .egid = pe->cred.gid, .sgid = pe->cred.gid,
		.ngroups = pe->ngroups, .groups = peer_groups, .groups_preset = 0,
	};
	/* The caller's credentials as the kernel recorded them at connect:
	 * its effective uid and gid and its groups (never a later /proc read:
	 * the peer may have exec'd a set-user-ID program since). */
	notify_enter(v->pin_fd, v->tag.id, &c);

	/* "join" was said before this process existed (supervise_connection):
	 * the client has been installing its filter meanwhile. */
	int listener = notify_receive_listener(CONN, "bad request: ");
	if (!notify_can_send_fds(listener))
		die(EXIT_REFUSE, "this kernel cannot hand a socket over with the answer "
		    "(SECCOMP_ADDFD_FLAG_SEND, Linux 5.14): upgrade, or use the set-user-ID path");
	say("ok\n");
	alarm(0);
	set_reply_fd(-1, NULL);
	close(CONN);
	notify_serve(listener, proc_fd, &sv);
}

/* The subject: the process that connected.  /proc/PID is opened by number
 * and the pidfd checked alive afterwards: then the number was not reused in
 * between, and the directory stays the peer's. */
static void open_subject(const struct peer *pe, struct subject *s, int *cg_fd)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d", (int)pe->cred.pid);
	s->pid = pe->cred.pid;
	s->proc_fd = openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s->proc_fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open %s", path);
	if (!fd_on_fs(s->proc_fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc is not procfs");
	peer_alive(pe, s->proc_fd);
	s->cg_out = cg_fd;
}

/* For a join: what the supervisor checks each socket() against -- the
 * allow-listed executables (opened as root: the list may be 0600) and the
 * build's cgroup path --, then the supervisor itself, created in the
 * caller's cgroup (the directory resolve() checked), so that its sockets
 * carry the build's cgroup and count against it, and the build's end ends
 * it.  clone3 with CLONE_INTO_CGROUP does that at creation (Linux 5.7); a
 * write to cgroup.procs would wait for an RCU grace period (~15 ms).  This
 * process then exits: cgnetnsd counts only requests in progress; the
 * supervisor lives as long as a task uses the caller's filter. */
__attribute__((noreturn))
static void start_supervisor(const struct peer *pe, const struct verdict *v,
			     const struct program *prog, int cg_fd, const char *context)
{
	allow_exe_set(&sv.allowed);
	sv.build = cgroup_tagged_path(&sv.build_len);
	int proc_fd = openat(AT_FDCWD, "/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (proc_fd < 0 || !fd_on_fs(proc_fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc is not procfs");

	struct cg_clone_args ca;
	memset(&ca, 0, sizeof ca);
	ca.flags = CG_CLONE_INTO_CGROUP;
	ca.cgroup = (uint64_t)cg_fd;
	ca.exit_signal = 0;
	long pid = syscall(SYS_clone3, &ca, sizeof ca);
	if (pid < 0)
		die_with_error(EXIT_REFUSE, "cannot start the supervisor in the caller's cgroup");
	if (pid == 0) {
		close_quietly(cg_fd);
		close_quietly(pe->pidfd);
		become_supervisor(pe, v, proc_fd);
	}
	/* Logged here, as root, by the process cgnetnsd started: the
	 * supervisor refuses (and logs) itself if its part fails. */
	log_line("cgnetnsd: %s: join %s (supervisor %ld)", context, prog->path, pid);
	_exit(0);
}

/* The checks of a process that may run this mode at all.  Only cgnetnsd,
 * running as real root, starts it.  A set-user-ID exec gives euid 0 but
 * keeps the caller's real uid and sets AT_SECURE, so no user reaches what
 * follows through the installed helper's set-user-ID bit.  Root of a user
 * namespace of its own does reach it (uid 0 there, no set-user-ID exec) and
 * gains nothing: it has no capability over the initial namespaces, and
 * root's files show unmapped there, so the allow list and the pins are
 * refused.  Returns whether to take the peer's pidfd from the kernel
 * (SO_PEERPIDFD) rather than by its pid (--peercred). */
int supervise_mode_check(int argc, char **argv, const char *mode)
{
	if (getuid() != 0 || geteuid() != 0 || getauxval(AT_SECURE))
		die(EXIT_REFUSE, "%s is the mode cgnetnsd runs as real root; "
		    "it is not for users", mode);
	if (argc == 3 && strcmp(argv[2], "--peercred") == 0)
		return 0; /* the pre-6.5 way, forced (cgnetnsd --peer-auth) */
	if (argc != 2)
		die(EXIT_REFUSE, "usage: " HELPER_NAME " %s [--peercred]", mode);
	/* Fds 0-2 taken (cgnetnsd gives /dev/null and its log), so that nothing
	 * opened here becomes one of them. */
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0)
			_exit(EXIT_REFUSE);
	/* No core dump, no /proc access by anyone but root while root. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	return 1;
}

void supervise_main(int argc, char **argv)
{
	supervise_connection(supervise_mode_check(argc, argv, "--supervise"));
}

/* One connection, on fd 3: from cgnetnsd's exec of --supervise, or in a
 * child of the fork server (spawner.c). */
void supervise_connection(int use_pidfd)
{
	struct peer pe;
	struct program prog;
	struct subject s;
	struct verdict v;
	struct stat st;
	int cg_fd = -1;
	char context[200];

	if (fstat(CONN, &st) < 0 || !S_ISSOCK(st.st_mode))
		die(EXIT_REFUSE, "--supervise: fd %d is not the connection", CONN);

	/* The deadline of every phase: SIGALRM's default action ends us,
	 * and the client sees its connection close. */
	signal(SIGALRM, SIG_DFL);
	alarm(BROKER_HANDSHAKE_SECONDS);

	/* Who asks (the kernel's record), and for what. */
	set_reply_fd(CONN, "peer");
	peer_identify(&pe, use_pidfd);
	snprintf(context, sizeof context, "pid=%d uid=%u", (int)pe.cred.pid,
		 (unsigned)pe.cred.uid);
	set_reply_fd(CONN, context);
	const char *program = read_request();
	snprintf(context + strlen(context), sizeof context - strlen(context),
		 " program=%.100s", program);
	set_reply_fd(CONN, context);
	open_subject(&pe, &s, &cg_fd);

	/* The same checks, in the same order, as the set-user-ID path. */
	allow_check_program(program, 1, 1, &prog);
	resolve(&s, &v);
	/* After reading its cgroup: still the same process (PID reuse). */
	peer_alive(&pe, s.proc_fd);
	close_quietly(prog.fd);
	close_quietly(s.proc_fd);
	/* "join": a supervisor will mint the caller's sockets.  Said now, before
	 * it is made: the client installs its filter while the supervisor is
	 * started and enters the namespace (nothing is granted by the word
	 * itself; the supervisor's "ok" or refusal follows the listener).
	 * "pass": in no build, or already in its namespace: the client runs the
	 * program itself, unchanged and without privilege. */
	char line[CG_PATH_MAX + 8];
	snprintf(line, sizeof line, "%s %s\n", v.kind == VERDICT_JOIN ? "join" : "pass",
		 prog.path);
	say(line);
	if (v.kind == VERDICT_JOIN)
		start_supervisor(&pe, &v, &prog, cg_fd, context);

	log_line("cgnetnsd: %s: pass %s", context, prog.path);
	_exit(0);
}
