/* rssprobe: the resident set of a program at its last moment, exactly.
 *
 *   rssprobe [-n N] [-u UID -g GID] [-P] -- PROGRAM [ARG...]
 *
 * ru_maxrss cannot measure a small static program on recent kernels: the
 * per-mm counters are per-CPU and read approximately (an error of up to
 * ~32 pages a CPU), so a helper of a few hundred KiB reads as 0.  Instead the
 * child is traced (PTRACE_TRACEME, asked while still root: a set-user-ID exec
 * then still takes effect) and stopped at each entry to execve, execveat or
 * exit_group after its first exec: there /proc/PID/smaps_rollup gives the
 * exact resident set of the image that is about to be replaced or to end.
 * For cgnetns-exec that is the helper's own memory just before it executes
 * the program (or, as a broker client, just before it exits).
 *
 * The child drops to UID/GID (-u/-g, no supplementary groups) and, with -P,
 * sets no_new_privs before it executes PROGRAM.  Output: one line per call,
 * "<largest Rss seen, KiB> <wait status>".  Needs root.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static long rss_kib(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, "\nRss:");
	return p ? strtol(p + 5, NULL, 10) : -1;
}

static int one_call(char **cmd, long uid, long gid, int nnp, long *peak)
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("rssprobe: fork");
		exit(1);
	}
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);
		if (devnull >= 0)
			dup2(devnull, 1);
		/* TRACEME while still root: the kernel records the tracer's
		 * credentials from the caller of TRACEME, and lets a set-user-ID
		 * exec take effect only for a tracer with CAP_SYS_PTRACE. */
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
			_exit(124);
		if (gid >= 0 && (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0))
			_exit(124);
		if (uid >= 0 && setresuid(uid, uid, uid) != 0)
			_exit(124);
		if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
			_exit(124);
		raise(SIGSTOP);
		execve(cmd[0], cmd, environ);
		_exit(127);
	}
	int status, execs = 0;
	*peak = -1;
	if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {
		fprintf(stderr, "rssprobe: child did not stop\n");
		exit(1);
	}
	ptrace(PTRACE_SETOPTIONS, pid, NULL,
	       (void *)(long)(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL));
	int sig = 0;
	for (;;) {
		if (ptrace(PTRACE_SYSCALL, pid, NULL, (void *)(long)sig) != 0) {
			perror("rssprobe: PTRACE_SYSCALL");
			exit(1);
		}
		sig = 0;
		if (waitpid(pid, &status, 0) != pid) {
			if (errno == EINTR)
				continue;
			perror("rssprobe: waitpid");
			exit(1);
		}
		if (WIFEXITED(status) || WIFSIGNALED(status))
			return status;
		if (!WIFSTOPPED(status))
			continue;
		if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
			sig = WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status);
			continue;
		}
		struct __ptrace_syscall_info info;
		if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *)sizeof info, &info) <= 0)
			continue;
		if (info.op != PTRACE_SYSCALL_INFO_ENTRY)
			continue;
		long nr = (long)info.entry.nr;
		if (nr != SYS_execve && nr != SYS_execveat && nr != SYS_exit_group)
			continue;
		/* The first exec is the forked child's own (our memory, not the
		 * program's): measure from the second stop on. */
		if (nr != SYS_exit_group && execs++ == 0)
			continue;
		long r = rss_kib(pid);
		if (r > *peak)
			*peak = r;
	}
}

int main(int argc, char **argv)
{
	long n = 10, uid = -1, gid = -1;
	int nnp = 0, opt;
	while ((opt = getopt(argc, argv, "+n:u:g:P")) != -1) {
		switch (opt) {
		case 'n': n = atol(optarg); break;
		case 'u': uid = atol(optarg); break;
		case 'g': gid = atol(optarg); break;
		case 'P': nnp = 1; break;
		default:
			fprintf(stderr, "usage: rssprobe [-n N] [-u UID -g GID] [-P] -- PROGRAM [ARG...]\n");
			return 2;
		}
	}
	if (optind >= argc || n < 1) {
		fprintf(stderr, "usage: rssprobe [-n N] [-u UID -g GID] [-P] -- PROGRAM [ARG...]\n");
		return 2;
	}
	for (long i = 0; i < n; i++) {
		long peak;
		int status = one_call(argv + optind, uid, gid, nnp, &peak);
		printf("%ld %d\n", peak, status);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
