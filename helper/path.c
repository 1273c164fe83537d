/* path.c: open a path that only root can change.
 *
 * Walks from "/" one component at a time with O_NOFOLLOW, so no symlink is
 * followed anywhere, and checks every opened directory with fstat(): owned
 * by uid 0 and not writable by group or others.  The last component is
 * opened the same way and must be a directory or a regular file with the
 * same owner and mode rules.  What was checked is the fd that is returned:
 * nothing is looked up by path again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

static int bad(struct trust_error *e, const char *path, size_t n, const char *why)
{
	e->unsafe = 1;
	e->err = 0;
	e->why = why;
	if (n >= sizeof e->where)
		n = sizeof e->where - 1;
	memcpy(e->where, path, n);
	e->where[n] = '\0';
	if (n == 0)
		strcpy(e->where, "/");
	return -1;
}

static int failed(struct trust_error *e, const char *path, size_t n)
{
	int err = errno;
	bad(e, path, n, NULL);
	e->unsafe = 0;
	e->err = err;
	errno = err;
	return -1;
}

/* Owned by root, no group/other write bit.  The sticky bit does not help:
 * a 1777 directory still lets others create names in it. */
static const char *check_owner_mode(const struct stat *st, int check_owner)
{
	if (check_owner && st->st_uid != 0)
		return "is not owned by root";
	if (st->st_mode & (S_IWGRP | S_IWOTH))
		return "is writable by group or others";
	return NULL;
}

int open_trusted(const char *abspath, enum trust_kind kind, int flags,
		 int check_owner, struct trust_error *e)
{
	struct stat st;
	const char *why;
	size_t n = strlen(abspath);

	memset(e, 0, sizeof *e);
	if (n == 0 || abspath[0] != '/' || n >= CG_PATH_MAX ||
	    (n > 1 && abspath[n - 1] == '/') || (n == 1 && kind != TRUST_DIR)) {
		errno = EINVAL;
		return failed(e, abspath, n);
	}
	int dir = openat(AT_FDCWD, "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0)
		return failed(e, "/", 1);
	if (fstat(dir, &st) < 0) {
		close_quietly(dir);
		return failed(e, "/", 1);
	}
	if ((why = check_owner_mode(&st, check_owner))) {
		close_quietly(dir);
		return bad(e, "/", 1, why);
	}

	size_t pos = 1;
	while (pos < n) {
		char name[256];
		const char *slash = memchr(abspath + pos, '/', n - pos);
		size_t end = slash ? (size_t)(slash - abspath) : n;
		size_t len = end - pos;
		int last = end == n;
		if (len == 0 || len >= sizeof name) {
			close_quietly(dir);
			errno = ENAMETOOLONG;
			return failed(e, abspath, end);
		}
		memcpy(name, abspath + pos, len);
		name[len] = '\0';
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
			close_quietly(dir);
			return bad(e, abspath, end, "is not canonical");
		}

		int want_dir = !last || kind == TRUST_DIR;
		int oflags = O_NOFOLLOW | O_CLOEXEC;
		if (!last)
			oflags |= O_PATH | O_DIRECTORY;
		else
			oflags |= flags | (kind == TRUST_DIR ? O_DIRECTORY : 0);
		int fd = openat(dir, name, oflags);
		if (fd < 0 && (errno == ELOOP || errno == ENOTDIR) &&
		    fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			/* only to name the reason: the open already failed */
			close_quietly(dir);
			return bad(e, abspath, end,
				   S_ISLNK(st.st_mode) ? "is a symbolic link"
				   : want_dir          ? "is not a directory"
						       : "is not a regular file");
		}
		close_quietly(dir);
		if (fd < 0)
			return failed(e, abspath, end);
		if (fstat(fd, &st) < 0) {
			close_quietly(fd);
			return failed(e, abspath, end);
		}
		if (want_dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)) {
			close_quietly(fd);
			return bad(e, abspath, end,
				   S_ISLNK(st.st_mode) ? "is a symbolic link"
				   : want_dir          ? "is not a directory"
						       : "is not a regular file");
		}
		if ((why = check_owner_mode(&st, check_owner))) {
			close_quietly(fd);
			return bad(e, abspath, end, why);
		}
		dir = fd;
		pos = end + 1;
	}
	return dir;
}
