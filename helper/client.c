/* client.c: cgnetns-exec without privilege, as a client of cgnetnsd.
 *
 * Where the set-user-ID bit gains nothing (no_new_privs -- Gentoo's sandbox
 * sets it --, a nosuid mount, a ptraced exec, a user namespace, no set-user-ID
 * bit), this process asks the broker (doc/BROKER.rst).  The broker looks at
 * who connected (the kernel's record: SO_PEERCRED, SO_PEERPIDFD), resolves
 * that process's build with the helper's own code and answers one line:
 *
 *   pass PATH            in no build, or already in its namespace: exec PATH
 *   refuse STATUS TEXT   print TEXT, exit STATUS; nothing run
 *   join PATH            a supervisor waits in the approved namespace: install
 *                        the seccomp filter (notify.c), send its listener,
 *                        then "ok" (or a refusal) comes back; exec PATH
 *
 * The program is then this very process: its ids, groups, cgroups (every
 * hierarchy), namespaces, root, cwd, descriptors, environment, limits,
 * signal state, seccomp filters, Landlock domain and LSM label are the
 * caller's because nothing changed them.  Only its AF_INET and AF_INET6
 * sockets are made elsewhere, by the supervisor, and only for allow-listed
 * executables of the build.  Nothing the client sends is believed about who
 * it is.
 *
 * Every system call here costs two tracer stops where a tracer watches (a
 * set-user-ID or static program under Gentoo's sandbox is traced; this is
 * the dynamic front, which is not): the path from start to exec is kept to
 * about a dozen calls, with no loop over descriptors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "helper.h"

#define ANSWER_MAX (CG_PATH_MAX + 700)

static char answer_buf[ANSWER_MAX];
static size_t answer_len;

/* One line from the broker (without its '\n'), or exit 125. */
static char *read_line(int sock)
{
	for (;;) {
		char *nl = memchr(answer_buf, '\n', answer_len);
		if (nl) {
			*nl = '\0';
			return answer_buf;
		}
		if (answer_len == sizeof answer_buf)
			die(EXIT_REFUSE, "answer from the broker too long");
		ssize_t r = recv(sock, answer_buf + answer_len, sizeof answer_buf - answer_len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			die(EXIT_REFUSE, "the broker did not answer within %d s (see its log)",
			    2 * BROKER_HANDSHAKE_SECONDS);
		if (r <= 0)
			die(EXIT_REFUSE, "the broker closed the connection without an answer "
			    "(see its log)");
		answer_len += (size_t)r;
	}
}

static void consume_line(void)
{
	char *nl = memchr(answer_buf, '\0', answer_len);
	size_t used = (size_t)(nl - answer_buf) + 1;
	memmove(answer_buf, answer_buf + used, answer_len - used);
	answer_len -= used;
}

static int parse_status(const char *s, const char **rest)
{
	int v = 0, digits = 0;
	for (; *s >= '0' && *s <= '9' && digits < 3; s++, digits++)
		v = v * 10 + (*s - '0');
	if (!digits || v > 255 || (*s != ' ' && *s != '\0'))
		return -1;
	*rest = *s ? s + 1 : s;
	return v;
}

/* "refuse STATUS TEXT": the broker's reason, printed here (the broker
 * writes into no descriptor of ours), then exit. */
__attribute__((noreturn))
static void refused(const char *line)
{
	const char *text;
	int status = parse_status(line + 7, &text);
	if (status < 0)
		die(EXIT_REFUSE, "unexpected answer from the broker: %.80s", line);
	if (*text)
		note("%s", text);
	_exit(status);
}

__attribute__((noreturn))
static void exec_path(const char *path, char **prog_argv, char **envp)
{
	execve(path, prog_argv, envp);
	die_with_error(errno == ENOENT ? EXIT_NOT_FOUND : EXIT_NOT_USABLE,
		       "cannot execute %s", path);
}

/* Ask the broker.  Returns (errno set) only when none answers. */
static void broker_client(const char *program, char **prog_argv, char **envp)
{
	struct sockaddr_un sa;
	size_t plen = strlen(program);

	if (plen == 0 || plen >= CG_PATH_MAX)
		die(EXIT_NOT_USABLE, "program name empty or too long");
	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, CGNETNS_BROKER_SOCKET, sizeof CGNETNS_BROKER_SOCKET);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return;
	/* A deadline on every wait for the broker: connect (a full backlog),
	 * its answers.  A stuck broker costs a build a refusal, not a hang.
	 * Twice the broker's own deadline, which it keeps for each request. */
	struct timeval tv = { 2 * BROKER_HANDSHAKE_SECONDS, 0 };
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	int r;
	do
		r = connect(sock, (struct sockaddr *)&sa, sizeof sa);
	while (r < 0 && errno == EINTR);
	if (r < 0 && (errno == EAGAIN || errno == ETIMEDOUT))
		die(EXIT_REFUSE, "the broker at %s did not accept within %d s (see its log)",
		    CGNETNS_BROKER_SOCKET, 2 * BROKER_HANDSHAKE_SECONDS);
	if (r < 0) {
		/* ENOENT, ECONNREFUSED, EACCES, ...: no broker answers. */
		close_quietly(sock);
		return;
	}

	/* The request: magic, flags, length, the program's name.  Nothing else:
	 * the broker learns who is asking from the kernel. */
	static char req[12 + CG_PATH_MAX];
	uint32_t flags = 0, len = (uint32_t)plen;
	memcpy(req, CGNETNS_BROKER_MAGIC, 4);
	memcpy(req + 4, &flags, 4);
	memcpy(req + 8, &len, 4);
	memcpy(req + 12, program, plen);
	ssize_t w;
	do
		w = send(sock, req, 12 + plen, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	if (w != (ssize_t)(12 + plen))
		die_with_error(EXIT_REFUSE, "cannot send the request to the broker");

	char *line = read_line(sock);
	if (strncmp(line, "pass /", 6) == 0) {
		close(sock);
		exec_path(line + 5, prog_argv, envp);
	}
	if (strncmp(line, "refuse ", 7) == 0)
		refused(line);
	if (strncmp(line, "join /", 6) != 0)
		die(EXIT_REFUSE, "unexpected answer from the broker: %.80s", line);

	/* Keep the path: the next line overwrites the buffer. */
	static char path[CG_PATH_MAX];
	size_t n = strlen(line + 5);
	if (n >= sizeof path)
		die(EXIT_REFUSE, "answer from the broker too long");
	memcpy(path, line + 5, n + 1);
	consume_line();

	int listener = notify_install_filter();
	notify_send_listener(sock, listener);
	close(listener);
	line = read_line(sock);
	if (strncmp(line, "refuse ", 7) == 0)
		refused(line);
	if (strcmp(line, "ok") != 0)
		die(EXIT_REFUSE, "unexpected answer from the broker: %.80s", line);
	close(sock);
	exec_path(path, prog_argv, envp);
}

/* Without privilege the tag cannot be read (trusted.* is invisible without
 * CAP_SYS_ADMIN), so whether the caller is in a build cannot be told here:
 * the broker is asked.  When none answers, the program runs unchanged -- no
 * more than the caller could do itself -- and one line says why it has no
 * network.  That line is left out where no build can exist: no pins
 * directory means no build on this host (cgnetns-run makes it before its
 * first build), so the caller is provably in none. */
static void no_broker_notice(const char *program, int connect_errno)
{
	struct stat st;
	const char *why = "not set-user-ID root, a nosuid mount or a ptraced exec";
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1)
		why = "no_new_privs";
	else if (!in_initial_userns())
		why = "a user namespace";
	if (lstat(CGNETNS_PINS_DIR, &st) == 0 || errno == EACCES)
		note("no privilege (%s) and no broker at %s (%s): "
		     "%.200s runs without network (in the current network namespace)",
		     why, CGNETNS_BROKER_SOCKET, errno_name(connect_errno), program);
}

void run_unprivileged(const char *program, char **prog_argv, char **envp)
{
	struct program prog;

	/* A closed fd 0-2 of the caller: keep the number taken, so that the
	 * socket opened below does not become fd 2 and receive our messages
	 * (a refusal written into the broker's connection).  O_CLOEXEC: the
	 * program sees the fd closed, as the caller had it. */
	for (int fd = 0; fd <= 2; fd++)
		if (fcntl(fd, F_GETFD) < 0 && openat(AT_FDCWD, "/dev/null", O_RDWR | O_CLOEXEC) != fd)
			_exit(EXIT_REFUSE);

	broker_client(program, prog_argv, envp);
	int connect_errno = errno;
	allow_check_program(program, 0, in_initial_userns(), &prog);
	no_broker_notice(program, connect_errno);
	exec_program(&prog, prog_argv, envp);
}
