/* spawner.c: cgnetns-helper --fork-server [--peercred], cgnetnsd's way of
 * starting the broker's side of each request without an exec.
 *
 * cgnetnsd (real root) starts this mode once, with one end of a
 * SOCK_SEQPACKET socket pair on fd 3 and keeps the other end; nobody else
 * holds either.  For each connection it accepts and decides to serve, it
 * sends a message: an 8-byte token, and the connection as the one
 * descriptor (SCM_RIGHTS).  This process forks; the child puts the
 * connection on fd 3 and does exactly what an exec of --supervise does
 * (supervise.c), and this process answers the token with a pidfd of the
 * child, which cgnetnsd counts, watches and, past the deadline, kills.
 *
 * Why: an exec of this static helper per request.  Without it a broker-path
 * call of `true` took about 0.1 ms less CPU and wall time on the project's
 * machine (2.05-2.10 ms of CPU instead of 2.14-2.23, measured over 1,000
 * calls); a fork of this small process copies a few page tables.
 *
 * What a child starts from: this process's state, which is the state of a
 * fresh --supervise exec -- nothing here reads a request, a credential or a
 * file; the child's globals are as the exec left them; its descriptors are
 * 0-2 (cgnetnsd's /dev/null and log) and the connection, every other one
 * is closed or close-on-exec and closed in the child.  Its argv[1] is
 * rewritten to "--supervise", so that ps and the tests see what they saw.
 *
 * Degrades: a request it cannot fork for is answered with the token and no
 * descriptor, and cgnetnsd closes the connection (the client exits 125).
 * cgnetnsd starts it again when it ends, and kills and replaces it when it
 * leaves a token unanswered for the handshake deadline (logged). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

#define CONTROL 3

static void reap_children(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

/* One message: TOKEN and at most one descriptor (-1 when none came). */
static int receive(uint64_t *token, int *fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { token, sizeof *token };
	struct msghdr m;
	memset(&m, 0, sizeof m);
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = sizeof cbuf;
	*fd = -1;
	/* MSG_CMSG_CLOEXEC: a descriptor received here never reaches an
	 * exec by accident. */
	ssize_t n = recvmsg(CONTROL, &m, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return (int)n;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	if (n != (ssize_t)sizeof *token || (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		close_quietly(*fd);
		*fd = -1;
	}
	return 1;
}

static void answer(uint64_t token, int pidfd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { &token, sizeof token };
	struct msghdr m;
	memset(&m, 0, sizeof m);
	memset(cbuf, 0, sizeof cbuf);
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	if (pidfd >= 0) {
		m.msg_control = cbuf;
		m.msg_controllen = sizeof cbuf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pidfd, sizeof(int));
	}
	/* Blocking: cgnetnsd reads these as they come.  A failure means it
	 * has gone; the next receive sees that. */
	(void)sendmsg(CONTROL, &m, MSG_NOSIGNAL);
}

__attribute__((noreturn))
static void child(int conn, char **argv, int use_pidfd)
{
	/* The connection on fd 3 (dup2 clears close-on-exec; nothing is
	 * exec'd anyway), the control socket gone with it. */
	if (conn != CONTROL) {
		if (dup2(conn, CONTROL) < 0)
			_exit(EXIT_REFUSE);
		close_quietly(conn);
	}
	size_t n = strlen(argv[1]);
	memset(argv[1], 0, n);
	memcpy(argv[1], "--supervise", n < 11 ? n : 11);
	supervise_connection(use_pidfd);
}

void spawner_main(int argc, char **argv)
{
	int use_pidfd = supervise_mode_check(argc, argv, "--fork-server");
	struct stat st;
	int type = 0;
	socklen_t len = sizeof type;
	if (fstat(CONTROL, &st) < 0 || !S_ISSOCK(st.st_mode) ||
	    getsockopt(CONTROL, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_SEQPACKET)
		die(EXIT_REFUSE, "--fork-server: fd %d is not cgnetnsd's socket pair", CONTROL);
	/* Children are reaped here, after their pidfd was taken (never before:
	 * a pid reaped is a pid that may be reused). */
	signal(SIGCHLD, SIG_DFL);
	for (;;) {
		struct pollfd p = { CONTROL, POLLIN, 0 };
		/* Wake up now and then to reap what ended while nothing came. */
		if (poll(&p, 1, 1000) < 0 && errno != EINTR)
			die_with_error(EXIT_REFUSE, "--fork-server: poll");
		reap_children();
		if (!(p.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		uint64_t token;
		int conn;
		int r = receive(&token, &conn);
		if (r == 0)
			_exit(0); /* cgnetnsd has gone */
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die_with_error(EXIT_REFUSE, "--fork-server: receive");
		}
		if (conn < 0) {
			answer(token, -1);
			continue;
		}
		pid_t pid = fork();
		if (pid == 0)
			child(conn, argv, use_pidfd);
		close_quietly(conn);
		/* Not reaped yet, so this pid is still the child's. */
		int pidfd = pid < 0 ? -1 : (int)syscall(SYS_pidfd_open, pid, 0);
		if (pid < 0)
			log_line("cgnetnsd: cannot start a supervise process: %s", strerror(errno));
		answer(token, pidfd);
		close_quietly(pidfd);
	}
}
