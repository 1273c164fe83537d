/* netprobe.c: test program for the broker path (tests/test_broker.py; not
 * installed).
 *
 *   netprobe report OUT [--connect=PORT] [--raw] [--netlink] [--write=PATH]
 *                       [--hold=MS] [--exec=PATH ARG...]
 *       Try each network thing asked for, then write a JSON report of this
 *       process to OUT ("-": standard output): ids, nice, oom_score_adj, /proc/self/status fields,
 *       every line of /proc/self/cgroup, its network namespace, and the
 *       outcome of each try.  --connect: the line a TCP server on
 *       127.0.0.1:PORT sends (or the errno); --raw: socket(AF_INET,
 *       SOCK_RAW) (an unprivileged caller gets EPERM); --netlink: the link
 *       names a NETLINK_ROUTE dump shows; --write: whether PATH could be
 *       created (Landlock); --unix=NAME: the line an abstract unix socket
 *       NAME sends (or the errno); --hold: keep the connected socket open MS
 *       milliseconds after writing the report (for /proc/net/tcp); --exec:
 *       after the report, exec PATH with the remaining arguments.
 *
 *   netprobe confine OUT [--nice=N] [--oom=N] [--seccomp] [--landlock=DIR]
 *                        -- CMD [ARG...]
 *       Confine itself as asked (nice, oom_score_adj, a seccomp filter that
 *       makes getcpu(2) fail with EPERM, a Landlock domain that allows
 *       writing only below DIR), write its report to OUT, exec CMD.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static FILE *out;

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

static void file_field(const char *key, const char *path)
{
	char buf[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
	if (fd >= 0)
		close(fd);
	buf[n < 0 ? 0 : n] = '\0';
	fprintf(out, ",\"%s\":", key);
	jstr(buf);
}

static char connect_result[256] = "";
static int held_fd = -1;
static char raw_result[64] = "";
static char netlink_result[4096] = "";
static char write_result[64] = "";
static char unix_result[256] = "";

/* --unix=NAME: connect to the abstract unix socket NAME (abstract names are
 * per network namespace) and read its line. */
static void try_unix(const char *name)
{
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		snprintf(unix_result, sizeof unix_result, "socket:%d", errno);
		return;
	}
	struct sockaddr_un a;
	memset(&a, 0, sizeof a);
	a.sun_family = AF_UNIX;
	size_t n = strlen(name);
	if (n > sizeof a.sun_path - 2)
		n = sizeof a.sun_path - 2;
	memcpy(a.sun_path + 1, name, n);
	if (connect(s, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0) {
		snprintf(unix_result, sizeof unix_result, "connect:%d", errno);
		close(s);
		return;
	}
	char line[200];
	ssize_t r = recv(s, line, sizeof line - 1, 0);
	line[r < 0 ? 0 : r] = '\0';
	char *nl = strchr(line, '\n');
	if (nl)
		*nl = '\0';
	snprintf(unix_result, sizeof unix_result, "token:%s", line);
	close(s);
}

static void try_connect(int port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		snprintf(connect_result, sizeof connect_result, "socket:%d", errno);
		return;
	}
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = { 5, 0 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
		snprintf(connect_result, sizeof connect_result, "connect:%d", errno);
		close(s);
		return;
	}
	char line[200];
	ssize_t n = recv(s, line, sizeof line - 1, 0);
	line[n < 0 ? 0 : n] = '\0';
	char *nl = strchr(line, '\n');
	if (nl)
		*nl = '\0';
	snprintf(connect_result, sizeof connect_result, "token:%s", line);
	held_fd = s;
}

static void try_raw(void)
{
	int s = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP);
	if (s < 0)
		snprintf(raw_result, sizeof raw_result, "errno:%d", errno);
	else {
		snprintf(raw_result, sizeof raw_result, "ok");
		close(s);
	}
}

static void try_netlink(void)
{
	int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (s < 0) {
		snprintf(netlink_result, sizeof netlink_result, "errno:%d", errno);
		return;
	}
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req;
	memset(&req, 0, sizeof req);
	req.h.nlmsg_len = sizeof req;
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.i.ifi_family = AF_UNSPEC;
	if (send(s, &req, sizeof req, 0) < 0) {
		snprintf(netlink_result, sizeof netlink_result, "errno:%d", errno);
		close(s);
		return;
	}
	char buf[65536];
	size_t used = 0;
	for (;;) {
		ssize_t n = recv(s, buf, sizeof buf, 0);
		if (n <= 0)
			break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n);
		     h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE)
				goto done;
			if (h->nlmsg_type != RTM_NEWLINK)
				continue;
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			int len = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *ifi));
			for (struct rtattr *a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
				if (a->rta_type == IFLA_IFNAME && used + 40 < sizeof netlink_result)
					used += (size_t)snprintf(netlink_result + used,
								 sizeof netlink_result - used, "%s%s",
								 used ? " " : "", (char *)RTA_DATA(a));
		}
	}
done:
	close(s);
}

static void try_write(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		snprintf(write_result, sizeof write_result, "errno:%d", errno);
	else {
		snprintf(write_result, sizeof write_result, "ok");
		close(fd);
	}
}

static void report(const char *path)
{
	struct stat st;
	if (!out)
		out = strcmp(path, "-") == 0 ? fdopen(dup(1), "w") : fopen(path, "w");
	if (!out) {
		perror(path);
		exit(3);
	}
	fprintf(out, "{\"pid\":%d,\"uid\":%u,\"euid\":%u", (int)getpid(), getuid(), geteuid());
	errno = 0;
	fprintf(out, ",\"nice\":%d", getpriority(PRIO_PROCESS, 0));
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	exe[n < 0 ? 0 : n] = '\0';
	fprintf(out, ",\"exe\":");
	jstr(exe);
	file_field("oom_score_adj", "/proc/self/oom_score_adj");
	file_field("status", "/proc/self/status");
	file_field("cgroup", "/proc/self/cgroup");
	if (stat("/proc/self/ns/net", &st) == 0)
		fprintf(out, ",\"netns\":[%llu,%llu]", (unsigned long long)st.st_dev,
			(unsigned long long)st.st_ino);
	fprintf(out, ",\"connect\":");
	jstr(connect_result);
	fprintf(out, ",\"raw\":");
	jstr(raw_result);
	fprintf(out, ",\"netlink\":");
	jstr(netlink_result);
	fprintf(out, ",\"write\":");
	jstr(write_result);
	fprintf(out, ",\"unix\":");
	jstr(unix_result);
	fprintf(out, "}\n");
	fclose(out);
	out = NULL;
}

static int confine(int argc, char **argv)
{
	int i;
	const char *dir = NULL;
	int seccomp = 0;
	for (i = 3; i < argc && strcmp(argv[i], "--") != 0; i++) {
		if (strncmp(argv[i], "--nice=", 7) == 0) {
			if (setpriority(PRIO_PROCESS, 0, atoi(argv[i] + 7)) < 0)
				return perror("setpriority"), 4;
		} else if (strncmp(argv[i], "--oom=", 6) == 0) {
			FILE *f = fopen("/proc/self/oom_score_adj", "w");
			if (!f || fprintf(f, "%s\n", argv[i] + 6) < 0 || fclose(f) != 0)
				return perror("oom_score_adj"), 4;
		} else if (strcmp(argv[i], "--seccomp") == 0) {
			seccomp = 1;
		} else if (strncmp(argv[i], "--landlock=", 11) == 0) {
			dir = argv[i] + 11;
		}
	}
	if (i >= argc - 1)
		return fprintf(stderr, "netprobe confine: no command\n"), 2;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return perror("no_new_privs"), 4;
	/* opened before the Landlock domain, which may not allow it */
	out = fopen(argv[2], "w");
	if (!out)
		return perror(argv[2]), 3;
	if (seccomp) {
		struct sock_filter f[] = {
			BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getcpu, 0, 1),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog p = { 4, f };
		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p) < 0)
			return perror("seccomp"), 4;
	}
	if (dir) {
		struct landlock_ruleset_attr ra = {
			.handled_access_fs = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_MAKE_REG,
		};
		int rs = (int)syscall(SYS_landlock_create_ruleset, &ra, sizeof ra, 0);
		if (rs < 0)
			return perror("landlock_create_ruleset"), 4;
		struct landlock_path_beneath_attr pb = {
			.allowed_access = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_MAKE_REG,
			.parent_fd = open(dir, O_PATH | O_CLOEXEC),
		};
		if (pb.parent_fd < 0 ||
		    syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) < 0 ||
		    syscall(SYS_landlock_restrict_self, rs, 0) < 0)
			return perror("landlock"), 4;
	}
	report(argv[2]);
	execv(argv[i + 1], argv + i + 1);
	perror(argv[i + 1]);
	return 127;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "confine") == 0)
		return confine(argc, argv);
	if (argc < 3 || strcmp(argv[1], "report") != 0) {
		fprintf(stderr, "usage: netprobe report OUT [...] | confine OUT [...] -- CMD\n");
		return 2;
	}
	int hold = 0;
	for (int i = 3; i < argc; i++) {
		if (strncmp(argv[i], "--connect=", 10) == 0)
			try_connect(atoi(argv[i] + 10));
		else if (strcmp(argv[i], "--raw") == 0)
			try_raw();
		else if (strcmp(argv[i], "--netlink") == 0)
			try_netlink();
		else if (strncmp(argv[i], "--write=", 8) == 0)
			try_write(argv[i] + 8);
		else if (strncmp(argv[i], "--unix=", 7) == 0)
			try_unix(argv[i] + 7);
		else if (strncmp(argv[i], "--hold=", 7) == 0)
			hold = atoi(argv[i] + 7);
		else if (strcmp(argv[i], "--exec") == 0 && i + 1 < argc) {
			report(argv[2]);
			execv(argv[i + 1], argv + i + 1);
			perror(argv[i + 1]);
			return 127;
		}
	}
	report(argv[2]);
	if (hold > 0) {
		struct timespec ts = { hold / 1000, (long)(hold % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (held_fd >= 0)
		close(held_fd);
	return 0;
}
