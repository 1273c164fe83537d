/* client.c: cgnetns-exec without privilege, as a client of cgnetnsd.
 *
 * Where the set-user-ID bit gains nothing (no_new_privs -- Gentoo's sandbox
 * sets it --, a nosuid mount, a ptraced exec, a user namespace, no set-user-ID
 * bit), the helper asks the broker to do the same thing for it: one request
 * on CGNETNS_BROKER_SOCKET (doc/BROKER.rst: header, payload, SCM_RIGHTS with
 * the cwd and the descriptors the program would inherit), then status lines
 * back, and the caller's job-control signals forwarded as "sig N" lines.
 *
 * Nothing here is privileged: this process has no more rights than its
 * caller (main.c has dropped whatever a set-user-ID exec gave it).  The
 * broker believes none of what is sent here about who the caller is; it
 * asks the kernel (SO_PEERPIDFD).
 *
 * Signals.  The caller's signal mask is never changed (the broker's agent
 * gives the program the caller's mask and ignored set, read from
 * /proc/PID/status), and a signal the caller ignores is not caught: it is
 * not forwarded, and the program ignores it too.  The others are caught by
 * a handler that writes the number to a pipe; they are forwarded once the
 * program has started ("start").  On "pass" the original dispositions are
 * restored and a signal that came meanwhile is raised again before the exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "helper.h"

#define MAX_PASSED_FDS 64      /* descriptors besides the cwd (BROKER.rst) */
#define FD_LIMIT 1000          /* 1000.. are the agent's own numbers */
#define MAX_PAYLOAD (4u << 20)
#define MAX_STRINGS 65536

static const int forwarded[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGCONT,
				 SIGUSR1, SIGUSR2, SIGWINCH };
#define NFORWARDED (int)(sizeof forwarded / sizeof forwarded[0])

static int sig_pipe[2] = { -1, -1 };
static struct sigaction saved[NFORWARDED];
static int caught[NFORWARDED];

static void on_signal(int signo)
{
	int saved_errno = errno;
	unsigned char b = (unsigned char)signo;
	ssize_t w = write(sig_pipe[1], &b, 1);
	(void)w;
	errno = saved_errno;
}

static void catch_signals(void)
{
	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
		die_with_error(EXIT_REFUSE, "pipe");
	for (int i = 0; i < NFORWARDED; i++) {
		struct sigaction sa;
		if (sigaction(forwarded[i], NULL, &saved[i]) < 0)
			continue;
		if (saved[i].sa_handler == SIG_IGN)
			continue; /* ignored by the caller: stays ignored */
		memset(&sa, 0, sizeof sa);
		sa.sa_handler = on_signal;
		sa.sa_flags = SA_RESTART;
		sigemptyset(&sa.sa_mask);
		if (sigaction(forwarded[i], &sa, NULL) == 0)
			caught[i] = 1;
	}
}

static void restore_signals(void)
{
	for (int i = 0; i < NFORWARDED; i++)
		if (caught[i])
			sigaction(forwarded[i], &saved[i], NULL);
}

/* ---- the request ---- */

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
	if (n > MAX_PAYLOAD || b->len + n > MAX_PAYLOAD + 16)
		die(EXIT_REFUSE, "the request to the broker would be larger than %u bytes "
		    "(arguments and environment too long)", MAX_PAYLOAD);
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p)
			die(EXIT_REFUSE, "out of memory");
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	put(b, &v, sizeof v);
}

static void send_all(int sock, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(sock, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			die_with_error(EXIT_REFUSE, "cannot send the request to the broker");
		p += w;
		n -= (size_t)w;
	}
}

/* The descriptors the program would inherit from an exec right now: every
 * open one without FD_CLOEXEC (all of the helper's own are O_CLOEXEC), below
 * 1000 (the agent's numbers begin there). */
static int inherited_fds(int *fds)
{
	int n = 0;
	for (int fd = 0; fd < FD_LIMIT; fd++) {
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0 || (fl & FD_CLOEXEC))
			continue;
		if (n == MAX_PASSED_FDS)
			die(EXIT_REFUSE, "more than %d open descriptors to pass to the broker",
			    MAX_PASSED_FDS);
		fds[n++] = fd;
	}
	return n;
}

static void send_request(int sock, char **prog_argv, char **envp)
{
	int fds[MAX_PASSED_FDS + 1];
	struct buf payload = { 0 }, body = { 0 };
	uint32_t argc = 0, envc = 0;

	/* The cwd first: O_PATH, so even a directory the caller may only
	 * search is passed; the agent enters it with the caller's ids. */
	fds[0] = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fds[0] < 0)
		die_with_error(EXIT_REFUSE, "cannot open the current directory");
	int nfds = 1 + inherited_fds(fds + 1);

	for (char **a = prog_argv; *a; a++) {
		if (++argc > MAX_STRINGS)
			die(EXIT_REFUSE, "too many arguments for the broker");
		put(&body, *a, strlen(*a) + 1);
	}
	for (char **e = envp; e && *e; e++) {
		if (++envc > MAX_STRINGS)
			die(EXIT_REFUSE, "too many environment variables for the broker");
		put(&body, *e, strlen(*e) + 1);
	}
	put_u32(&payload, argc);
	put_u32(&payload, envc);
	int32_t minus1 = -1;
	put(&payload, &minus1, sizeof minus1);
	for (int i = 1; i < nfds; i++) {
		int32_t v = fds[i];
		put(&payload, &v, sizeof v);
	}
	put(&payload, body.p, body.len);
	free(body.p);

	struct {
		char magic[4];
		uint32_t length, nfds, flags;
	} hdr = { { 'C', 'G', 'N', '1' }, (uint32_t)payload.len, (uint32_t)nfds, 0 };

	/* One sendmsg with the header, as much payload as the socket takes and
	 * every descriptor; the rest of the payload follows. */
	union {
		char buf[CMSG_SPACE(sizeof(int) * (MAX_PASSED_FDS + 1))];
		struct cmsghdr align;
	} cm;
	memset(&cm, 0, sizeof cm);
	struct iovec iov[2] = { { &hdr, sizeof hdr }, { payload.p, payload.len } };
	struct msghdr msg = { 0 };
	msg.msg_iov = iov;
	msg.msg_iovlen = 2;
	msg.msg_control = cm.buf;
	msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	ssize_t w;
	do
		w = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	if (w < 0)
		die_with_error(EXIT_REFUSE, "cannot send the request to the broker");
	size_t sent = (size_t)w;
	if (sent < sizeof hdr)
		send_all(sock, (const char *)&hdr + sent, sizeof hdr - sent), sent = sizeof hdr;
	send_all(sock, payload.p + (sent - sizeof hdr), payload.len - (sent - sizeof hdr));
	free(payload.p);
	close(fds[0]);
}

/* ---- after the request ---- */

static void send_signal_line(int sock, int signo)
{
	char line[16];
	int n = snprintf(line, sizeof line, "sig %d\n", signo);
	ssize_t w = send(sock, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w; /* the broker gone: its end of file reaches us next */
}

/* Die of signo as the program did: default disposition, unblocked, raised.
 * A signal whose default is not to terminate: 128+N, as a shell shows it. */
__attribute__((noreturn))
static void die_of_signal(int signo)
{
	struct sigaction sa;
	sigset_t set;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	if (signo > 0 && signo < 65 && signo != SIGKILL && signo != SIGSTOP)
		sigaction(signo, &sa, NULL);
	/* no core file of the client for the program's crash */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	sigemptyset(&set);
	sigaddset(&set, signo);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(signo);
	_exit(128 + signo);
}

/* After "start": the program has the caller's descriptors now; let go of
 * ours, so that a reader waiting for end of file on a pipe is not held up by
 * this process.  The numbers stay taken (/dev/null) until exit. */
static void release_fds(int keep1, int keep2)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	for (int fd = 0; fd < FD_LIMIT; fd++) {
		if (fd == keep1 || fd == keep2 || fd == null)
			continue;
		int fl = fcntl(fd, F_GETFD);
		if (fl < 0 || (fl & FD_CLOEXEC))
			continue;
		if (null >= 0 && fd <= 2)
			dup3(null, fd, O_CLOEXEC);
		else
			close(fd);
	}
	close_quietly(null);
}

static int parse_num(const char *s, int max)
{
	long v = 0;
	if (!*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
		if (v > max)
			return -1;
	}
	return (int)v;
}

__attribute__((noreturn))
static void serve_status(int sock, char **prog_argv, char **envp)
{
	char line[CG_PATH_MAX + 16];
	size_t len = 0;
	int started = 0;
	unsigned char pending[64];
	int npending = 0;

	for (;;) {
		struct pollfd p[2] = { { sock, POLLIN, 0 }, { sig_pipe[0], POLLIN, 0 } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die_with_error(EXIT_REFUSE, "poll");
		}
		if (p[1].revents & POLLIN) {
			unsigned char sigs[64];
			ssize_t r = read(sig_pipe[0], sigs, sizeof sigs);
			for (ssize_t i = 0; i < r; i++) {
				if (!started) {
					if (npending < (int)sizeof pending)
						pending[npending++] = sigs[i];
					continue;
				}
				send_signal_line(sock, sigs[i]);
				if (sigs[i] == SIGTSTP)
					/* The program stops; so does this process, so that the
					 * shell sees the job stop.  SIGCONT (forwarded) resumes. */
					kill(getpid(), SIGSTOP);
			}
		}
		if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		ssize_t r = recv(sock, line + len, sizeof line - 1 - len, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die(EXIT_REFUSE, "the broker closed the connection without an answer "
			    "(see its log)");
		len += (size_t)r;
		char *nl;
		while ((nl = memchr(line, '\n', len))) {
			*nl = '\0';
			if (strncmp(line, "pass /", 6) == 0) {
				/* In no build, or already in its namespace: run the
				 * program (the canonical path the broker checked) here,
				 * unchanged, with what the caller gave us. */
				restore_signals();
				for (int i = 0; i < npending; i++)
					raise(pending[i]);
				close(sock);
				execve(line + 5, prog_argv, envp);
				int err = errno;
				errno = err;
				die_with_error(err == ENOENT ? EXIT_NOT_FOUND : EXIT_NOT_USABLE,
					       "cannot execute %s", line + 5);
			} else if (strcmp(line, "start") == 0 && !started) {
				started = 1;
				release_fds(sock, sig_pipe[0]);
				for (int i = 0; i < npending; i++)
					send_signal_line(sock, pending[i]);
				npending = 0;
			} else if (strncmp(line, "exit ", 5) == 0 && parse_num(line + 5, 255) >= 0) {
				_exit(parse_num(line + 5, 255));
			} else if (strncmp(line, "signal ", 7) == 0 && parse_num(line + 7, 64) > 0) {
				die_of_signal(parse_num(line + 7, 64));
			} else if (strncmp(line, "refuse ", 7) == 0 && parse_num(line + 7, 255) >= 0) {
				/* the agent has written the reason to our stderr */
				_exit(parse_num(line + 7, 255));
			} else {
				die(EXIT_REFUSE, "unexpected answer from the broker: %.80s", line);
			}
			len -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, len);
		}
		if (len == sizeof line - 1)
			die(EXIT_REFUSE, "answer from the broker too long");
	}
}

void broker_client(const char *program, char **prog_argv, char **envp)
{
	struct sockaddr_un sa;

	memset(&sa, 0, sizeof sa);
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, CGNETNS_BROKER_SOCKET, sizeof CGNETNS_BROKER_SOCKET);
	int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return;
	int r;
	do
		r = connect(sock, (struct sockaddr *)&sa, sizeof sa);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		/* ENOENT, ECONNREFUSED, EACCES, ...: no broker answers.  main.c
		 * runs the program unchanged and says why (errno is kept). */
		close_quietly(sock);
		return;
	}
	catch_signals();
	/* The request's argv[0] is PROGRAM (BROKER.rst): called through a
	 * masquerade symlink, that is the symlink's name, not its path.  A
	 * "pass" still runs the program with argv exactly as given. */
	size_t n = 0;
	while (prog_argv[n])
		n++;
	char **req_argv = calloc(n + 1, sizeof *req_argv);
	if (!req_argv)
		die(EXIT_REFUSE, "out of memory");
	memcpy(req_argv, prog_argv, n * sizeof *req_argv);
	req_argv[0] = (char *)program;
	send_request(sock, req_argv, envp);
	free(req_argv);
	serve_status(sock, prog_argv, envp);
}
