/* rssprobe: per image of one process, its system calls and its resident set
 * at its last moment, exactly.
 *
 *   rssprobe [-n N] [-u UID -g GID] [-P] -- PROGRAM [ARG...]
 *
 * The child is traced (PTRACE_TRACEME, asked while still root: a set-user-ID
 * exec then still takes effect, because the tracer's credentials recorded at
 * TRACEME carry CAP_SYS_PTRACE) and stopped at the entry and exit of every
 * system call.  An "image" is what runs between two successful execs: for
 * ``cgnetns-exec PROGRAM`` on the set-user-ID path, image 1 is the front
 * (dynamic: ld.so's start-up included), image 2 the set-user-ID helper,
 * image 3 PROGRAM; on the broker path, image 1 is the front as the broker's
 * client and image 2 PROGRAM.  For each image:
 *
 *   syscalls  the system calls it made, from the first after the exec that
 *             started it to the exec that replaced it (that exec included;
 *             an exec that failed counts as one call of the image that made
 *             it), or to its exit_group (included);
 *   rss       /proc/PID/smaps_rollup's Rss at the entry of that last exec or
 *             exit_group: the image's resident set at its end;
 *   start     of those, the calls before its first prctl(2): for a dynamic
 *             front whose main() starts with prctl(PR_GET_NO_NEW_PRIVS), its
 *             start-up (ld.so, and where Gentoo's sandbox preloads it,
 *             libsandbox's constructor); -1 when the image made no prctl.
 *
 * ru_maxrss cannot measure a small static program on recent kernels: the
 * per-mm counters are per-CPU and read approximately (an error of up to ~32
 * pages a CPU), so a helper of a few hundred KiB reads as 0; hence the stop.
 * Only the traced process is followed (no fork is traced): cgnetns-exec
 * forks nothing on either path.
 *
 * The child drops to UID/GID (-u/-g, no supplementary groups) and, with -P,
 * sets no_new_privs before it executes PROGRAM.  Without -u it keeps the
 * caller's ids (rssprobe may then run as any user, e.g. inside Gentoo's
 * sandbox as the build user).  Output: one line per call,
 *
 *   <wait status> <syscalls>:<rss KiB>:<start> [<syscalls>:<rss KiB>:<start>]...
 *
 * one field per image in order.  Part of cgnetns' benchmarks (bench/);
 * compiled at bench time with gcc. */
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

#define MAX_IMAGES 8

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

struct image {
	long syscalls, rss, start;
};

/* One call; returns its wait status, fills img[0..*nimg). */
static int one_call(char **cmd, long uid, long gid, int nnp, struct image *img, int *nimg)
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
	int status;
	if (waitpid(pid, &status, 0) != pid || !WIFSTOPPED(status)) {
		fprintf(stderr, "rssprobe: child did not stop\n");
		exit(1);
	}
	ptrace(PTRACE_SETOPTIONS, pid, NULL,
	       (void *)(long)(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL));
	/* cur: the image running now; 0 is the forked child before its
	 * first exec (ours, not counted: no field is printed for it). */
	int cur = 0, sig = 0;
	long pending_rss = -1, in_exec = 0;
	memset(img, 0, sizeof *img * MAX_IMAGES);
	for (int k = 0; k < MAX_IMAGES; k++)
		img[k].start = -1;
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
		if (WIFEXITED(status) || WIFSIGNALED(status)) {
			*nimg = cur;
			return status;
		}
		if (!WIFSTOPPED(status))
			continue;
		if (WSTOPSIG(status) != (SIGTRAP | 0x80)) {
			/* The SIGTRAP after a successful exec is the kernel's,
			 * not the program's: it is not passed on. */
			sig = WSTOPSIG(status) == SIGTRAP ? 0 : WSTOPSIG(status);
			continue;
		}
		struct __ptrace_syscall_info info;
		if (ptrace(PTRACE_GET_SYSCALL_INFO, pid, (void *)sizeof info, &info) <= 0)
			continue;
		if (info.op == PTRACE_SYSCALL_INFO_ENTRY) {
			long nr = (long)info.entry.nr;
			if (cur > 0 && nr == SYS_prctl && img[cur - 1].start < 0)
				img[cur - 1].start = img[cur - 1].syscalls;
			if (cur > 0)
				img[cur - 1].syscalls++;
			if (nr == SYS_execve || nr == SYS_execveat) {
				in_exec = 1;
				pending_rss = cur > 0 ? rss_kib(pid) : -1;
			} else if (nr == SYS_exit_group && cur > 0) {
				img[cur - 1].rss = rss_kib(pid);
			}
		} else if (info.op == PTRACE_SYSCALL_INFO_EXIT && in_exec) {
			in_exec = 0;
			if (info.exit.is_error)
				continue;     /* still the same image */
			if (cur > 0)
				img[cur - 1].rss = pending_rss;
			if (cur == MAX_IMAGES) {
				fprintf(stderr, "rssprobe: more than %d execs\n", MAX_IMAGES);
				exit(1);
			}
			cur++;
		}
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
		struct image img[MAX_IMAGES];
		int nimg = 0;
		int status = one_call(argv + optind, uid, gid, nnp, img, &nimg);
		printf("%d", status);
		for (int k = 0; k < nimg; k++)
			printf(" %ld:%ld:%ld", img[k].syscalls, img[k].rss, img[k].start);
		printf("\n");
	}
	return fflush(stdout) == 0 ? 0 : 1;
}
