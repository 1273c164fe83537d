/* env.c: the environment handed to the program: the caller's, byte for byte.
 *
 * With musl (the default build) nothing is done to the environment before
 * main(), in secure mode too: `environ` is the caller's.
 *
 * glibc, even in a static binary, removes LD_PRELOAD, LD_LIBRARY_PATH,
 * TMPDIR, GCONV_PATH, MALLOC_*, ... from a set-id program's environment
 * before main() (its "unsecure" list) and rewrites GLIBC_TUNABLES.  The
 * caller's original strings are still on the stack, which the kernel shows
 * as /proc/self/environ: they are read back from there.  The file is opened
 * before the privilege drop (a set-user-ID process is not dumpable, so its
 * /proc files belong to root) and read only after it: nothing of the
 * environment is read while privileged. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

extern char **environ;

#ifdef __GLIBC__
static int environ_fd = -1;
#endif

void env_prepare(void)
{
#ifdef __GLIBC__
	if (!getauxval(AT_SECURE))
		return;
	environ_fd = openat(AT_FDCWD, "/proc/self/environ", O_RDONLY | O_CLOEXEC);
	if (environ_fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open /proc/self/environ");
	if (!fd_on_fs(environ_fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc/self/environ is not on procfs");
#endif
}

#ifdef __GLIBC__
static char **environ_from_proc(int fd)
{
	size_t cap = 64 * 1024, len = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		if (!buf)
			die(EXIT_REFUSE, "cannot restore the environment: out of memory");
		ssize_t r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die_with_error(EXIT_REFUSE, "cannot restore the environment");
		if (r == 0)
			break;
		len += (size_t)r;
		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
	}
	close_quietly(fd);
	if (len > 0 && buf[len - 1] != '\0')
		buf[len++] = '\0'; /* cap + 1 leaves room */
	size_t n = 0;
	for (size_t i = 0; i < len; i++)
		n += buf[i] == '\0';
	char **env = calloc(n + 1, sizeof *env);
	if (!env)
		die(EXIT_REFUSE, "cannot restore the environment: out of memory");
	size_t k = 0;
	for (size_t i = 0; i < len; i += strlen(buf + i) + 1)
		env[k++] = buf + i;
	env[k] = NULL;
	return env;
}
#endif

char **env_for_program(void)
{
#ifdef __GLIBC__
	if (environ_fd >= 0)
		return environ_from_proc(environ_fd);
#endif
	return environ;
}
