/* spawnloop: start commands N times each from one process and time each call.
 *
 *   spawnloop [-n N] [-w WARMUP] [-P] -- COMMAND [::: COMMAND]...
 *   COMMAND:  [@UID:GID[:nnp]] PROGRAM [ARG...]
 *
 * Each call is the whole life of one child as its parent sees it: from just
 * before it is started until wait4(2) returns, so process start-up, dynamic
 * linking, the program's work and its exit are all inside the figure.  The
 * child inherits the environment, stdin and stderr; its stdout goes to
 * /dev/null.  PROGRAM is an absolute path (no PATH search).
 *
 * Several commands, separated by ":::", are called in turn (call i runs
 * command i mod K), N calls each: neighbouring calls of different commands
 * see the same machine, so a comparison between them is not skewed by
 * whatever else the machine does meanwhile.
 *
 * A command may start with @UID:GID: its child takes those ids (and no
 * supplementary groups) before it executes PROGRAM, and with ":nnp" also
 * sets no_new_privs -- so that one driver running as root can time a
 * program as root and the set-user-ID helper as an unprivileged user side
 * by side.  Children are started with posix_spawn(3); with any @ prefix,
 * with vfork(2) and the raw system calls instead (what posix_spawn does
 * inside, with the id changes added), so the cost of starting is the same.
 *
 * Output on stdout, one line per measured call (warm-up calls are not
 * printed):   <nanoseconds> <wait status> <ru_maxrss in KiB> <command index>
 *
 * -P sets PR_SET_NO_NEW_PRIVS in spawnloop itself (inherited by every child:
 * a set-user-ID program then gains nothing).  Exit status: 0, or 1 when a
 * call could not be started; a child's status is reported in its line.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_CMDS 8

static int use_vfork;  /* static: untouched by the vfork child's stack use */

struct command {
	char **argv;
	long uid, gid;  /* -1: keep spawnloop's */
	int nnp;
};

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage(void)
{
	fprintf(stderr, "usage: spawnloop [-n N] [-w WARMUP] [-P] -- "
		"[@UID:GID[:nnp]] PROGRAM [ARG...] [::: ...]...\n");
	exit(2);
}

/* The child of vfork: only raw system calls (it shares our memory and must
 * not touch libc state), then exec or _exit. */
static void vfork_child(const struct command *c, int devnull)
{
	syscall(SYS_dup2, devnull, 1);
	if (c->gid >= 0 && (syscall(SYS_setgroups, 0, NULL) != 0 ||
			    syscall(SYS_setresgid, c->gid, c->gid, c->gid) != 0))
		syscall(SYS_exit, 124);
	if (c->uid >= 0 && syscall(SYS_setresuid, c->uid, c->uid, c->uid) != 0)
		syscall(SYS_exit, 124);
	if (c->nnp && syscall(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		syscall(SYS_exit, 124);
	syscall(SYS_execve, c->argv[0], c->argv, environ);
	syscall(SYS_exit, 127);
}

int main(int argc, char **argv)
{
	long n = 100, warm = 5;
	int nnp = 0, opt;

	while ((opt = getopt(argc, argv, "+n:w:P")) != -1) {
		switch (opt) {
		case 'n': n = strtol(optarg, NULL, 10); break;
		case 'w': warm = strtol(optarg, NULL, 10); break;
		case 'P': nnp = 1; break;
		default: usage();
		}
	}
	if (optind >= argc || n < 1 || warm < 0)
		usage();

	/* Split the commands at ":::" (each becomes its own NULL-terminated argv). */
	struct command cmds[MAX_CMDS];
	int k = 0;
	cmds[k++].argv = argv + optind;
	for (int i = optind; i < argc; i++) {
		if (strcmp(argv[i], ":::") == 0) {
			if (k == MAX_CMDS)
				usage();
			argv[i] = NULL;
			cmds[k++].argv = argv + i + 1;
		}
	}
	for (int i = 0; i < k; i++) {
		struct command *c = &cmds[i];
		c->uid = c->gid = -1;
		c->nnp = 0;
		if (c->argv[0] && c->argv[0][0] == '@') {
			char tail[8] = "";
			if (sscanf(c->argv[0], "@%ld:%ld:%7s", &c->uid, &c->gid, tail) < 2 ||
			    (tail[0] && strcmp(tail, "nnp") != 0))
				usage();
			c->nnp = tail[0] != 0;
			c->argv++;
			use_vfork = 1;
		}
		if (!c->argv[0])
			usage();
	}
	long total = n * k;

	if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		perror("spawnloop: PR_SET_NO_NEW_PRIVS");
		return 1;
	}

	int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (devnull < 0) {
		perror("spawnloop: /dev/null");
		return 1;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, devnull, 1);

	/* Results are kept in memory and printed at the end, so that writing
	 * them never lands between two calls. */
	long long *t = calloc((size_t)total, sizeof *t);
	int *st = calloc((size_t)total, sizeof *st);
	long *rss = calloc((size_t)total, sizeof *rss);
	if (!t || !st || !rss) {
		perror("spawnloop: calloc");
		return 1;
	}

	for (long i = -warm * k; i < total; i++) {
		const struct command *c = &cmds[(i % k + k) % k];
		pid_t pid;
		long long t0 = now_ns();
		if (use_vfork) {
			pid = vfork();
			if (pid == 0)
				vfork_child(c, devnull);
			if (pid < 0) {
				perror("spawnloop: vfork");
				return 1;
			}
		} else {
			int e = posix_spawn(&pid, c->argv[0], &fa, NULL, c->argv, environ);
			if (e != 0) {
				fprintf(stderr, "spawnloop: %s: %s\n", c->argv[0], strerror(e));
				return 1;
			}
		}
		int status;
		struct rusage ru;
		while (wait4(pid, &status, 0, &ru) < 0) {
			if (errno != EINTR) {
				perror("spawnloop: wait4");
				return 1;
			}
		}
		long long t1 = now_ns();
		if (i >= 0) {
			t[i] = t1 - t0;
			st[i] = status;
			rss[i] = ru.ru_maxrss;
		}
	}
	for (long i = 0; i < total; i++)
		printf("%lld %d %ld %ld\n", t[i], st[i], rss[i], i % k);
	return fflush(stdout) == 0 ? 0 : 1;
}
