/* probe.c: test program for tests/test_helper*.py (not installed).
 *
 *   probe report OUT [--connect=PORT] [--try-root] [--exit=N] [ARG...]
 *       Write a JSON report of this process to OUT (the report is also the
 *       marker that the probe ran): argv, environment, ids, groups,
 *       capabilities, signal state, umask, rlimits, fds, cwd, cgroup,
 *       network namespace, whether libcgnetns-test-preload.so was preloaded;
 *       with --connect, the line a TCP server on 127.0.0.1:PORT sends; with
 *       --try-root, whether setuid(0) and friends fail.
 *
 *   probe launch OUT [--umask=OCT] [--ignore=SIG] [--block=SIG] [--nofile=N]
 *                    [--close=FD] [--argv0=S] [--empty-argv] [--add-env=RAW]
 *                    [--core=unlimited] [--seccomp-enosys=NR] [--become=UID]
 *                    -- CMD [ARG...]
 *       Set up the caller's state, write the same report of itself to OUT,
 *       then exec CMD (execv, no PATH lookup): the report is what the helper
 *       was given, to compare with what its program got.
 *
 *   probe race OUT MODE -- HELPER [ARG...]
 *       Play the attacker during the helper's privileged window: start it,
 *       SIGSTOP it while its effective uid is 0, then try ptrace, /proc/PID/mem,
 *       environ, fd, process_vm_readv; then MODE: "cont" lets it go on, "kill"
 *       SIGKILLs it, "abort" sends SIGABRT (core dump attempt).  JSON to OUT.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static FILE *out;

static void hexstr(const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		fprintf(out, "%02x", *p);
	fputc('"', out);
}

static void jstr(const char *s)
{
	fputc('"', out);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(out, "\\%c", *p);
		else if (*p < 0x20 || *p >= 0x7f)
			fprintf(out, "\\u%04x", *p);
		else
			fputc(*p, out);
	}
	fputc('"', out);
}

struct fdinfo {
	int fd;
	char target[512];
	int flags, fdflags;
};

/* List fds before opening anything else. */
static int list_fds(struct fdinfo *fds, int max)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	struct dirent *e;
	while ((e = readdir(d)) && n < max) {
		if (e->d_name[0] == '.')
			continue;
		int fd = atoi(e->d_name);
		if (fd == dirfd(d))
			continue;
		char p[64];
		snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
		ssize_t l = readlink(p, fds[n].target, sizeof fds[n].target - 1);
		fds[n].target[l > 0 ? l : 0] = '\0';
		fds[n].fd = fd;
		fds[n].flags = fcntl(fd, F_GETFL);
		fds[n].fdflags = fcntl(fd, F_GETFD);
		n++;
	}
	closedir(d);
	return n;
}

static void status_fields(void)
{
	static const char *keys[] = { "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:",
				      "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:",
				      "Seccomp:", "SigBlk:", "SigIgn:", "SigCgt:", "Umask:" };
	FILE *f = fopen("/proc/self/status", "re");
	char line[4096];
	int first = 1;
	fprintf(out, "\"status\": {");
	while (f && fgets(line, sizeof line, f)) {
		for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
			size_t k = strlen(keys[i]);
			if (strncmp(line, keys[i], k) == 0) {
				char *v = line + k;
				while (*v == ' ' || *v == '\t')
					v++;
				v[strcspn(v, "\n")] = '\0';
				for (char *c = v; *c; c++)
					if (*c == '\t')
						*c = ' ';
				char key[32];
				snprintf(key, sizeof key, "%.*s", (int)k - 1, keys[i]);
				fprintf(out, "%s", first ? "" : ", ");
				jstr(key);
				fprintf(out, ": ");
				jstr(v);
				first = 0;
			}
		}
	}
	if (f)
		fclose(f);
	fprintf(out, "}");
}

static void report(const char *path, int argc, char **argv, int argstart,
		   int port, int try_root)
{
	struct fdinfo fds[256];
	int nfds = list_fds(fds, 256);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	out = fopen(tmp, "we");
	if (!out) {
		perror(tmp);
		exit(90);
	}
	fprintf(out, "{\"pid\": %d, \"ppid\": %d,\n", (int)getpid(), (int)getppid());
	fprintf(out, "\"argv\": [");
	for (int i = argstart; i < argc; i++) {
		fprintf(out, "%s", i > argstart ? ", " : "");
		hexstr(argv[i]);
	}
	fprintf(out, "],\n\"env\": [");
	for (char **e = environ; *e; e++) {
		fprintf(out, "%s", e != environ ? ", " : "");
		hexstr(*e);
	}
	fprintf(out, "],\n");
	uid_t r, e, s;
	gid_t rg, eg, sg;
	getresuid(&r, &e, &s);
	getresgid(&rg, &eg, &sg);
	fprintf(out, "\"uids\": [%u, %u, %u], \"gids\": [%u, %u, %u],\n", r, e, s, rg, eg, sg);
	gid_t groups[256];
	int ng = getgroups(256, groups);
	fprintf(out, "\"groups\": [");
	for (int i = 0; i < ng; i++)
		fprintf(out, "%s%u", i ? ", " : "", groups[i]);
	fprintf(out, "],\n");
	status_fields();
	fprintf(out, ",\n\"fds\": {");
	for (int i = 0; i < nfds; i++) {
		fprintf(out, "%s\"%d\": {\"target\": ", i ? ", " : "", fds[i].fd);
		jstr(fds[i].target);
		fprintf(out, ", \"flags\": %d, \"fdflags\": %d}", fds[i].flags, fds[i].fdflags);
	}
	fprintf(out, "},\n\"rlimits\": {");
	for (int i = 0; i < RLIM_NLIMITS; i++) {
		struct rlimit rl;
		getrlimit(i, &rl);
		fprintf(out, "%s\"%d\": [\"%llu\", \"%llu\"]", i ? ", " : "", i,
			(unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max);
	}
	fprintf(out, "},\n");
	char buf[4096];
	if (!getcwd(buf, sizeof buf))
		strcpy(buf, "?");
	fprintf(out, "\"cwd\": ");
	jstr(buf);
	struct stat st;
	if (stat("/proc/self/ns/net", &st) == 0)
		fprintf(out, ",\n\"netns\": {\"dev\": %llu, \"ino\": %llu}",
			(unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
	FILE *f = fopen("/proc/self/cgroup", "re");
	char line[4096] = "";
	while (f && fgets(line, sizeof line, f))
		if (strncmp(line, "0::", 3) == 0)
			break;
	if (f)
		fclose(f);
	line[strcspn(line, "\n")] = '\0';
	fprintf(out, ",\n\"cgroup\": ");
	jstr(strncmp(line, "0::", 3) == 0 ? line + 3 : "");
	ssize_t l = readlink("/proc/self/exe", buf, sizeof buf - 1);
	buf[l > 0 ? l : 0] = '\0';
	fprintf(out, ",\n\"exe\": ");
	jstr(buf);
	int *pre = dlsym(RTLD_DEFAULT, "cgnetns_test_preloaded");
	fprintf(out, ",\n\"preloaded\": %d", pre ? *pre : 0);
	fprintf(out, ",\n\"dumpable\": %d", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	mode_t mask = umask(022);
	umask(mask);
	fprintf(out, ",\n\"umask\": %d", (int)mask);
	if (port > 0) {
		int sk = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		struct timeval tv = { 5, 0 };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		setsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		setsockopt(sk, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		fprintf(out, ",\n\"connect\": ");
		if (connect(sk, (struct sockaddr *)&a, sizeof a) < 0) {
			fprintf(out, "{\"error\": ");
			jstr(strerror(errno));
			fprintf(out, "}");
		} else {
			char tok[128];
			ssize_t n = read(sk, tok, sizeof tok - 1);
			tok[n > 0 ? n : 0] = '\0';
			tok[strcspn(tok, "\n")] = '\0';
			fprintf(out, "{\"token\": ");
			jstr(tok);
			fprintf(out, "}");
		}
		close(sk);
	}
	if (try_root) {
		/* each attempt reported as 0 (it worked: bad) or the errno */
		fprintf(out, ",\n\"regain\": {\"setuid0\": %d", setuid(0) == 0 ? 0 : errno);
		fprintf(out, ", \"seteuid0\": %d", seteuid(0) == 0 ? 0 : errno);
		fprintf(out, ", \"setresuid0\": %d", setresuid(0, 0, 0) == 0 ? 0 : errno);
		fprintf(out, ", \"setgid0\": %d", setgid(0) == 0 ? 0 : errno);
		fprintf(out, ", \"setgroups0\": %d}", setgroups(0, NULL) == 0 ? 0 : errno);
	}
	fprintf(out, "}\n");
	if (fclose(out) != 0 || rename(tmp, path) != 0) {
		perror(path);
		exit(91);
	}
}

static int status_euid(int fd, char *state)
{
	char buf[4096];
	ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *s = strstr(buf, "\nState:");
	if (s && state)
		*state = s[8] == '\t' ? s[9] : s[8];
	char *u = strstr(buf, "\nUid:");
	unsigned r, e;
	if (!u || sscanf(u + 5, "%u %u", &r, &e) != 2)
		return -1;
	return (int)e;
}

static int race(const char *path, const char *mode, char **cmd)
{
	int attempts, caught = 0;
	int res_attach = -1, res_seize = -1, res_mem = -1, res_environ = -1, res_fd = -1,
	    res_vm = -1, res_cwd = -1;
	int wstatus = -1;
	cpu_set_t set;

	/* The report an attempt's program would write: an attempt that does not
	 * catch the helper in its privileged window lets it run to the end, so
	 * remove that report before each attempt.  What is left afterwards can
	 * only come from the caught attempt. */
	const char *report = NULL;
	for (char **a = cmd; a[0] && a[1]; a++)
		if (strcmp(a[0], "report") == 0)
			report = a[1];
	for (attempts = 1; attempts <= 2000 && !caught; attempts++) {
		if (report)
			unlink(report);
		pid_t pid = fork();
		if (pid == 0) {
			CPU_ZERO(&set);
			CPU_SET(0, &set);
			sched_setaffinity(0, sizeof set, &set);
			execv(cmd[0], cmd);
			_exit(127);
		}
		CPU_ZERO(&set);
		CPU_SET(1, &set);
		sched_setaffinity(0, sizeof set, &set);
		char p[64];
		snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
		int sfd = open(p, O_RDONLY | O_CLOEXEC);
		int stopped = 0;
		for (long spin = 0; sfd >= 0 && spin < 2000000; spin++) {
			int e = status_euid(sfd, NULL);
			if (e < 0)
				break;
			if (e == 0) {
				kill(pid, SIGSTOP);
				stopped = 1;
				break;
			}
		}
		if (stopped) {
			int st;
			if (waitpid(pid, &st, WUNTRACED) == pid && WIFSTOPPED(st)) {
				char state = '?';
				if (status_euid(sfd, &state) == 0 && state == 'T') {
					caught = 1;
				} else {
					kill(pid, SIGCONT);
					waitpid(pid, &st, 0);
				}
			}
		} else {
			waitpid(pid, NULL, 0);
		}
		if (!caught) {
			if (sfd >= 0)
				close(sfd);
			continue;
		}
		/* The attacks, each recorded as 0 (it worked) or its errno. */
		errno = 0;
		res_attach = ptrace(PTRACE_ATTACH, pid, 0, 0) == 0 ? 0 : errno;
		if (res_attach == 0)
			ptrace(PTRACE_DETACH, pid, 0, 0);
		res_seize = ptrace(PTRACE_SEIZE, pid, 0, 0) == 0 ? 0 : errno;
		if (res_seize == 0)
			ptrace(PTRACE_DETACH, pid, 0, 0);
		snprintf(p, sizeof p, "/proc/%d/mem", (int)pid);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		res_mem = fd >= 0 ? 0 : errno;
		snprintf(p, sizeof p, "/proc/%d/environ", (int)pid);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		res_environ = fd >= 0 ? 0 : errno;
		snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
		fd = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		res_fd = fd >= 0 ? 0 : errno;
		char lk[256];
		snprintf(p, sizeof p, "/proc/%d/cwd", (int)pid);
		res_cwd = readlink(p, lk, sizeof lk) >= 0 ? 0 : errno;
		char data[16];
		struct iovec local = { data, sizeof data }, remote = { (void *)0x400000, sizeof data };
		res_vm = process_vm_readv(pid, &local, 1, &remote, 1, 0) >= 0 ? 0 : errno;
		if (strcmp(mode, "kill") == 0) {
			kill(pid, SIGKILL);
		} else if (strcmp(mode, "abort") == 0) {
			kill(pid, SIGABRT);
			kill(pid, SIGCONT);
		} else {
			kill(pid, SIGCONT);
		}
		waitpid(pid, &wstatus, 0);
		close(sfd);
	}
	out = fopen(path, "we");
	if (!out)
		return 92;
	fprintf(out, "{\"attempts\": %d, \"caught\": %d, \"attach\": %d, \"seize\": %d, "
		"\"mem\": %d, \"environ\": %d, \"fd\": %d, \"cwd\": %d, \"vm_readv\": %d, "
		"\"exited\": %d, \"status\": %d, \"signaled\": %d, \"signal\": %d, \"core\": %d}\n",
		attempts - 1, caught, res_attach, res_seize, res_mem, res_environ, res_fd, res_cwd,
		res_vm, wstatus >= 0 && WIFEXITED(wstatus), wstatus >= 0 ? WEXITSTATUS(wstatus) : -1,
		wstatus >= 0 && WIFSIGNALED(wstatus), wstatus >= 0 && WIFSIGNALED(wstatus) ? WTERMSIG(wstatus) : 0,
		wstatus >= 0 && WIFSIGNALED(wstatus) && WCOREDUMP(wstatus));
	fclose(out);
	return 0;
}

/* A seccomp filter that makes syscall nr fail with ENOSYS, as on a kernel
 * (or under a container profile) without it. */
static void seccomp_enosys(int nr)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof f / sizeof f[0], f };
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) {
		perror("seccomp");
		exit(93);
	}
}

static int launch(int argc, char **argv)
{
	const char *path = argv[2];
	const char *argv0 = NULL;
	int empty_argv = 0;
	static char *added[64];
	int nadded = 0;
	int i;
	sigset_t block;
	sigemptyset(&block);
	for (i = 3; i < argc && strcmp(argv[i], "--") != 0; i++) {
		const char *a = argv[i];
		if (strncmp(a, "--umask=", 8) == 0)
			umask((mode_t)strtol(a + 8, NULL, 8));
		else if (strncmp(a, "--ignore=", 9) == 0)
			signal(atoi(a + 9), SIG_IGN);
		else if (strncmp(a, "--block=", 8) == 0)
			sigaddset(&block, atoi(a + 8));
		else if (strncmp(a, "--nofile=", 9) == 0) {
			struct rlimit rl = { (rlim_t)atol(a + 9), (rlim_t)atol(a + 9) };
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
				perror("setrlimit");
		} else if (strncmp(a, "--close=", 8) == 0)
			close(atoi(a + 8));
		else if (strncmp(a, "--argv0=", 8) == 0)
			argv0 = a + 8;
		else if (strcmp(a, "--empty-argv") == 0)
			empty_argv = 1;
		else if (strncmp(a, "--seccomp-enosys=", 17) == 0)
			seccomp_enosys(atoi(a + 17));
		else if (strncmp(a, "--become=", 9) == 0) {
			/* drop to uid=gid=N with no groups (after a root-only step) */
			gid_t g = (gid_t)atoi(a + 9);
			if (setgroups(0, NULL) < 0 || setresgid(g, g, g) < 0 ||
			    setresuid((uid_t)atoi(a + 9), (uid_t)atoi(a + 9), (uid_t)atoi(a + 9)) < 0) {
				perror("become");
				return 94;
			}
		} else if (strncmp(a, "--add-env=", 10) == 0 && nadded < 63)
			added[nadded++] = (char *)a + 10;
		else if (strncmp(a, "--core=", 7) == 0) {
			struct rlimit rl = { RLIM_INFINITY, RLIM_INFINITY };
			if (setrlimit(RLIMIT_CORE, &rl) < 0)
				perror("setrlimit");
		}
		else {
			fprintf(stderr, "probe launch: unknown option %s\n", a);
			return 2;
		}
	}
	if (i + 1 >= argc)
		return 2;
	sigprocmask(SIG_BLOCK, &block, NULL);
	if (nadded) {
		/* raw entries (duplicates, no '=') appended to the environment */
		size_t n = 0;
		while (environ[n])
			n++;
		char **env = calloc(n + (size_t)nadded + 1, sizeof *env);
		memcpy(env, environ, n * sizeof *env);
		memcpy(env + n, added, (size_t)nadded * sizeof *env);
		environ = env;
	}
	char **cmd = argv + i + 1;
	report(path, argc, argv, i + 2, 0, 0);
	if (empty_argv) {
		char *none[] = { NULL };
		execve(cmd[0], none, environ);
	} else {
		const char *file = cmd[0];
		if (argv0)
			cmd[0] = (char *)argv0;
		execv(file, cmd);
	}
	perror("probe launch: exec");
	return 127;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "report") == 0) {
		int port = 0, try_root = 0, status = 0;
		for (int i = 3; i < argc; i++) {
			if (strncmp(argv[i], "--exit=", 7) == 0)
				status = atoi(argv[i] + 7);
			if (strncmp(argv[i], "--connect=", 10) == 0)
				port = atoi(argv[i] + 10);
			else if (strcmp(argv[i], "--try-root") == 0)
				try_root = 1;
		}
		report(argv[2], argc, argv, 0, port, try_root);
		return status;
	}
	if (argc >= 5 && strcmp(argv[1], "launch") == 0)
		return launch(argc, argv);
	if (argc >= 6 && strcmp(argv[1], "race") == 0 && strcmp(argv[4], "--") == 0)
		return race(argv[2], argv[3], argv + 5);
	fprintf(stderr, "usage: probe report|launch|race ...\n");
	return 2;
}
