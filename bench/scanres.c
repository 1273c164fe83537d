/* scanres: the resolver cgnetns is designed NOT to be, for comparison.
 *
 *   scanres PROGRAM [ARG...]
 *
 * Finds "the build's parent" by scanning the process tree, as a tool that
 * trusts process ancestry would: read /proc/<pid>/stat of every process on the
 * host to build the pid -> ppid map, walk it up from the caller's parent to the
 * first ancestor whose network namespace differs from the caller's, then
 * setns(2) into that namespace and execute PROGRAM.  Its cost grows with the
 * number of processes on the host; it needs root (it opens other processes'
 * /proc/<pid>/ns/net), and it is neither safe nor what cgnetns does.
 *
 * Exit status: 125 when no ancestor outside the caller's namespace is found or
 * setns fails, 127 when PROGRAM cannot be executed.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

static int ppid_of(const char *pid, int *ppid)
{
	char path[300], buf[1024];
	snprintf(path, sizeof path, "/proc/%s/stat", pid);
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
	long max = 4194305; /* PID_MAX_LIMIT + 1 */
	int *parent = calloc((size_t)max, sizeof *parent);
	if (!parent)
		return 125;
	DIR *d = opendir("/proc");
	if (!d)
		return 125;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] < '1' || e->d_name[0] > '9')
			continue;
		int pid = atoi(e->d_name), pp;
		if (pid > 0 && pid < max && ppid_of(e->d_name, &pp) == 0)
			parent[pid] = pp;
	}
	closedir(d);

	struct stat self;
	if (stat("/proc/self/ns/net", &self) != 0)
		return 125;
	for (int pid = getppid(), hops = 0; pid > 0 && hops < 4096; pid = parent[pid], hops++) {
		char path[64];
		struct stat st;
		snprintf(path, sizeof path, "/proc/%d/ns/net", pid);
		if (stat(path, &st) != 0)
			continue;
		if (st.st_dev == self.st_dev && st.st_ino == self.st_ino)
			continue;
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
	fprintf(stderr, "scanres: no ancestor outside this network namespace\n");
	return 125;
}
