/* util.c: messages and exit.
 *
 * Every message is one line on fd 2, prefixed "cgnetns-exec: ", written
 * with a single write(2).  No stdio, no locale, no strerror(): nothing here
 * reads the environment (glibc's strerror() may consult LANGUAGE), and
 * nothing is buffered that could be flushed into a file later. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "helper.h"

#define PREFIX SELF_NAME ": "
#define LINE_MAX_BYTES 600

static const struct {
	int e;
	const char *s;
} errnames[] = {
	{ EPERM, "Operation not permitted" },
	{ ENOENT, "No such file or directory" },
	{ ESRCH, "No such process" },
	{ EINTR, "Interrupted system call" },
	{ EIO, "Input/output error" },
	{ E2BIG, "Argument list too long" },
	{ ENOEXEC, "Exec format error" },
	{ EBADF, "Bad file descriptor" },
	{ ENOMEM, "Cannot allocate memory" },
	{ EACCES, "Permission denied" },
	{ EFAULT, "Bad address" },
	{ EBUSY, "Device or resource busy" },
	{ EXDEV, "Invalid cross-device link" },
	{ ENOTDIR, "Not a directory" },
	{ EISDIR, "Is a directory" },
	{ EINVAL, "Invalid argument" },
	{ ENFILE, "Too many open files in system" },
	{ EMFILE, "Too many open files" },
	{ ENOTTY, "Inappropriate ioctl for device" },
	{ ETXTBSY, "Text file busy" },
	{ ERANGE, "Numerical result out of range" },
	{ ENAMETOOLONG, "File name too long" },
	{ ENOSYS, "Function not implemented" },
	{ ELOOP, "Too many levels of symbolic links" },
	{ ENODATA, "No data available" },
	{ EOPNOTSUPP, "Operation not supported" },
	{ EAGAIN, "Resource temporarily unavailable" },
	{ ELIBBAD, "Accessing a corrupted shared library" },
};

const char *errno_name(int e)
{
	static char buf[32];
	for (size_t i = 0; i < sizeof errnames / sizeof errnames[0]; i++)
		if (errnames[i].e == e)
			return errnames[i].s;
	snprintf(buf, sizeof buf, "errno %d", e);
	return buf;
}

/* Format into line (after its first `skip` bytes); returns the length. */
__attribute__((format(printf, 3, 0)))
static size_t format(char *line, size_t skip, const char *fmt, va_list ap, int err)
{
	size_t n = skip;
	int r = vsnprintf(line + n, LINE_MAX_BYTES - n - 1, fmt, ap);
	if (r < 0)
		r = 0;
	n += (size_t)r < LINE_MAX_BYTES - n - 1 ? (size_t)r : LINE_MAX_BYTES - n - 2;
	if (err && n < LINE_MAX_BYTES - 1) {
		int k = snprintf(line + n, LINE_MAX_BYTES - n - 1, ": %s", errno_name(err));
		if (k > 0)
			n += (size_t)k < LINE_MAX_BYTES - n - 1 ? (size_t)k : LINE_MAX_BYTES - n - 2;
	}
	return n;
}

/* Copy src (n bytes) to fd 2 as one line, every byte outside printable
 * ASCII as \xNN: a caller-chosen string (a program name with a newline)
 * cannot forge or split a line of the broker's log. */
static void write_escaped(const char *src, size_t n)
{
	char out[4 * LINE_MAX_BYTES + 2];
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)src[i];
		if (c >= 0x20 && c < 0x7f && c != '\\') {
			out[o++] = (char)c;
		} else {
			static const char hex[] = "0123456789abcdef";
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o++] = '\n';
	ssize_t w = write(STDERR_FILENO, out, o);
	(void)w;
}

/* The broker's side of a request (supervise.c): refusals go to the client
 * on the connection, and to the broker's log on fd 2. */
static int reply_fd = -1;
static char reply_context[256];

void set_reply_fd(int fd, const char *context)
{
	reply_fd = fd;
	snprintf(reply_context, sizeof reply_context, "%s", context ? context : "");
}

void log_line(const char *fmt, ...)
{
	char line[LINE_MAX_BYTES];
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	size_t n = format(line, 0, fmt, ap, 0);
	va_end(ap);
	write_escaped(line, n);
	errno = saved;
}

/* Format, make printable (the program name comes from the caller: no
 * control characters, so the message stays one line), write once. */
__attribute__((format(printf, 1, 0)))
static void emit(const char *fmt, va_list ap, int err, int status)
{
	char line[LINE_MAX_BYTES];
	size_t p = strlen(PREFIX);
	memcpy(line, PREFIX, p);
	size_t n = format(line, p, fmt, ap, err);
	for (size_t i = p; i < n; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c == 0x7f)
			line[i] = '?';
	}
	if (reply_fd >= 0 && status >= 0) {
		/* "refuse STATUS MESSAGE\n" to the client, which prints the
		 * message itself: this process never writes into a
		 * descriptor of the caller's. */
		char ans[LINE_MAX_BYTES + 16];
		int k = snprintf(ans, sizeof ans, "refuse %d %.*s\n", status,
				 (int)(n - p), line + p);
		if (k > 0) {
			ssize_t w = send(reply_fd, ans, (size_t)k < sizeof ans ? (size_t)k : sizeof ans - 1,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			(void)w;
		}
		char logl[LINE_MAX_BYTES + 300];
		k = snprintf(logl, sizeof logl, "cgnetnsd: %s: refuse %d: %.*s", reply_context,
			     status, (int)(n - p), line + p);
		if (k > 0)
			write_escaped(logl, (size_t)k < sizeof logl ? (size_t)k : sizeof logl - 1);
		return;
	}
	line[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, n);
	(void)w;
}

void note(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	emit(fmt, ap, 0, -1);
	va_end(ap);
	errno = saved;
}

void die(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	emit(fmt, ap, 0, status);
	va_end(ap);
	_exit(status);
}

void die_with_error(int status, const char *fmt, ...)
{
	int err = errno;
	va_list ap;
	va_start(ap, fmt);
	emit(fmt, ap, err, status);
	va_end(ap);
	_exit(status);
}

int is_self_name(const char *argv0)
{
	const char *b = base_name(argv0);
	return strcmp(b, SELF_NAME) == 0 || strcmp(b, HELPER_NAME) == 0;
}

#define USAGE "usage: " SELF_NAME " [--] PROGRAM [ARG...]"

void program_from_argv(int argc, char **argv, const char **program, char ***prog_argv)
{
	/* Kernels before 5.18 allowed argc == 0; newer ones pass an empty
	 * argv[0].  Either way there is no name to run by, and the masquerade
	 * rule below needs one. */
	if (argc < 1 || !argv[0] || !argv[0][0])
		die(EXIT_REFUSE, "refusing to run with an empty argv[0]");
	if (!is_self_name(argv[0])) {
		*program = base_name(argv[0]);
		*prog_argv = argv;
		return;
	}
	int i = 1;
	if (i < argc && strcmp(argv[i], "--") == 0)
		i++;
	else if (i < argc && argv[i][0] == '-')
		die(EXIT_REFUSE, "unknown option %.100s; " USAGE, argv[i]);
	if (i >= argc)
		die(EXIT_REFUSE, USAGE);
	*program = argv[i];
	*prog_argv = argv + i;
}

/* Read until EOF or until buf is full.  Returns the byte count, size + 1
 * when the file is longer than buf (the caller refuses it), or -1. */
ssize_t read_full(int fd, char *buf, size_t size)
{
	size_t got = 0;
	for (;;) {
		char extra;
		char *dst = got < size ? buf + got : &extra;
		size_t want = got < size ? size - got : 1;
		ssize_t r = read(fd, dst, want);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (r == 0)
			return (ssize_t)got;
		if (got >= size)
			return (ssize_t)size + 1;
		got += (size_t)r;
	}
}

void close_quietly(int fd)
{
	if (fd >= 0) {
		int saved = errno;
		close(fd);
		errno = saved;
	}
}

/* 1 when fd is on a filesystem of this type (statfs f_type), else 0. */
int fd_on_fs(int fd, unsigned long magic)
{
	struct statfs sf;
	if (fstatfs(fd, &sf) < 0)
		return 0;
	return (unsigned long)sf.f_type == magic;
}
