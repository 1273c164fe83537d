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

/* Format, make printable (the program name comes from the caller: no
 * control characters, so the message stays one line), write once. */
__attribute__((format(printf, 1, 0)))
static void emit(const char *fmt, va_list ap, int err)
{
	char line[LINE_MAX_BYTES];
	size_t n = strlen(PREFIX);
	memcpy(line, PREFIX, n);
	int r = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
	if (r < 0)
		r = 0;
	n += (size_t)r < sizeof line - n - 1 ? (size_t)r : sizeof line - n - 2;
	if (err && n < sizeof line - 1) {
		int k = snprintf(line + n, sizeof line - n - 1, ": %s", errno_name(err));
		if (k > 0)
			n += (size_t)k < sizeof line - n - 1 ? (size_t)k : sizeof line - n - 2;
	}
	for (size_t i = strlen(PREFIX); i < n; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c == 0x7f)
			line[i] = '?';
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
	emit(fmt, ap, 0);
	va_end(ap);
	errno = saved;
}

/* The broker's agent (agent.c) answers on a status pipe: every refusal
 * there is also a status line ("refuse N", or "exit N" once the program has
 * been announced), written after the message on fd 2. */
static int verdict_fd = -1;
static const char *verdict_word = "refuse";

void set_verdict_fd(int fd, const char *word)
{
	verdict_fd = fd;
	verdict_word = word;
}

__attribute__((noreturn))
static void finish(int status)
{
	if (verdict_fd >= 0) {
		char line[32];
		int n = snprintf(line, sizeof line, "%s %d\n", verdict_word, status);
		if (n > 0) {
			ssize_t w = write(verdict_fd, line, (size_t)n);
			(void)w;
		}
	}
	_exit(status);
}

void die(int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	emit(fmt, ap, 0);
	va_end(ap);
	finish(status);
}

void die_with_error(int status, const char *fmt, ...)
{
	int err = errno;
	va_list ap;
	va_start(ap, fmt);
	emit(fmt, ap, err);
	va_end(ap);
	finish(status);
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
