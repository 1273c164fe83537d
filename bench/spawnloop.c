/* spawnloop: start PROGRAM N times from one process and time each call.
 *
 *   spawnloop [-n N] [-w WARMUP] [-m spawn|fork] [-P] -- PROGRAM [ARG...] [::: PROGRAM [ARG...]]...
 *
 * Each call is the whole life of one child as its parent sees it: from just
 * before posix_spawn(3) (or fork+execve) until wait4(2) returns, so process
 * start-up, dynamic linking, the program's work and its exit are all inside
 * the figure.  The child inherits the environment, stdin and stderr; its
 * stdout goes to /dev/null.  PROGRAM is an absolute path (no PATH search).
 *
 * Several commands, separated by ":::", are called in turn (call i runs
 * command i mod K), N calls each: neighbouring calls of different commands
 * see the same machine, so a comparison between them is not skewed by
 * whatever else the machine does meanwhile.
 *
 * Output on stdout, one line per measured call (warm-up calls are not
 * printed):   <nanoseconds> <wait status> <ru_maxrss in KiB> <command index>
 *
 * -P sets PR_SET_NO_NEW_PRIVS first (inherited by every child: a setuid
 * program then gains nothing).  Exit status: 0, or 1 when a call could not be
 * started; a child's non-zero status is reported in its line, not here.
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
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_CMDS 8

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage(void)
{
	fprintf(stderr, "usage: spawnloop [-n N] [-w WARMUP] [-m spawn|fork] [-P] -- "
		"PROGRAM [ARG...] [::: PROGRAM [ARG...]]...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long n = 100, warm = 5;
	int use_fork = 0, nnp = 0, opt;

	while ((opt = getopt(argc, argv, "+n:w:m:P")) != -1) {
		switch (opt) {
		case 'n': n = strtol(optarg, NULL, 10); break;
		case 'w': warm = strtol(optarg, NULL, 10); break;
		case 'm':
			if (strcmp(optarg, "fork") == 0) use_fork = 1;
			else if (strcmp(optarg, "spawn") == 0) use_fork = 0;
			else usage();
			break;
		case 'P': nnp = 1; break;
		default: usage();
		}
	}
	if (optind >= argc || n < 1 || warm < 0)
		usage();
	/* Split the commands at ":::" (each becomes its own NULL-terminated argv). */
	char **cmds[MAX_CMDS];
	int k = 0;
	cmds[k++] = argv + optind;
	for (int i = optind; i < argc; i++) {
		if (strcmp(argv[i], ":::") == 0) {
			if (k == MAX_CMDS)
				usage();
			argv[i] = NULL;
			cmds[k++] = argv + i + 1;
		}
	}
	for (int i = 0; i < k; i++)
		if (!cmds[i][0])
			usage();
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
		char **cmd = cmds[(i % k + k) % k];
		pid_t pid;
		long long t0 = now_ns();
		if (use_fork) {
			pid = fork();
			if (pid == 0) {
				dup2(devnull, 1);
				execve(cmd[0], cmd, environ);
				_exit(127);
			}
			if (pid < 0) {
				perror("spawnloop: fork");
				return 1;
			}
		} else {
			int e = posix_spawn(&pid, cmd[0], &fa, NULL, cmd, environ);
			if (e != 0) {
				fprintf(stderr, "spawnloop: %s: %s\n", cmd[0], strerror(e));
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
