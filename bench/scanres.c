/* scanres: the resolver cgnetns is designed NOT to be, for comparison.
 *
 *   scanres PROGRAM [ARG...]
 *
 * Finds "the build's parent" by process ancestry, as a tool that trusts it
 * would: from the caller's parent up, read /proc/<pid>/stat for the next
 * parent id, until the first ancestor whose network namespace differs from
 * the caller's; then setns(2) into that namespace and execute PROGRAM.  Only
 * the ancestry is read (one stat of /proc/<pid>/ns/net and one read of
 * /proc/<pid>/stat per generation), never the whole process table, so its
 * cost grows with the depth of the process tree, not with the number of
 * processes on the host.  It needs root (it opens other processes'
 * /proc/<pid>/ns/net), and it is neither safe nor what cgnetns does: a
 * process whose parent exited is re-parented to init or a subreaper, and
 * then the "build's parent" is whatever that is.
 *
 * Exit status: 125 when no ancestor outside the caller's namespace is found or
 * setns fails, 127 when PROGRAM cannot be executed.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static int ppid_of(int pid, int *ppid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strrchr(buf, ')');          /* comm may hold spaces and ')' */
	if (!p || sscanf(p + 2, "%*c %d", ppid) != 1)
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: scanres PROGRAM [ARG...]\n");
		return 2;
	}
	struct stat self;
	if (stat("/proc/self/ns/net", &self) != 0)
		return 125;
	for (int pid = getppid(), hops = 0; pid > 0 && hops < 4096; hops++) {
		char path[64];
		struct stat st;
		snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
		if (stat(path, &st) == 0 &&
		    (st.st_dev != self.st_dev || st.st_ino != self.st_ino)) {
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
				perror("scanres: setns");
				return 125;
			}
			close(fd);
			execve(argv[1], argv + 1, environ);
			perror("scanres: execve");
			return 127;
		}
		int pp;
		if (ppid_of(pid, &pp) != 0)
			break;
		pid = pp;
	}
	fprintf(stderr, "scanres: no ancestor outside this network namespace\n");
	return 125;
}
