/* pin.c: the pin and namespace identities (step 5 of doc/FORMAT.rst).
 *
 * The pin is /run/cgnetns/pins/<ID>: an nsfs file bind-mounted by root in a
 * root-only directory.  It is opened without following symlinks, and then
 * everything is checked on the fd: the filesystem (nsfs), the namespace type
 * (net), the identity (st_dev/st_ino) and, where the tag has one, the
 * kernel's 64-bit namespace id, which unlike the inode number is never
 * reused. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

void netns_of_fd(int fd, const char *what, struct ns_ident *id)
{
	struct stat st;
	if (!fd_on_fs(fd, CG_NSFS_MAGIC))
		die(EXIT_REFUSE, "%s is not a namespace file", what);
	int type = ioctl(fd, CG_NS_GET_NSTYPE);
	if (type < 0)
		die_with_error(EXIT_REFUSE, "cannot read the namespace type of %s", what);
	if (type != CLONE_NEWNET)
		die(EXIT_REFUSE, "%s is not a network namespace", what);
	if (fstat(fd, &st) < 0)
		die_with_error(EXIT_REFUSE, "cannot stat %s", what);
	id->dev = (uint64_t)st.st_dev;
	id->ino = (uint64_t)st.st_ino;
}

int pin_open_verified(const struct tag *t)
{
	struct trust_error e;
	struct ns_ident id;

	/* Root-owned, not group/other writable, reached without symlinks: only
	 * root can have put anything in it. */
	int dir = open_trusted(CGNETNS_PINS_DIR, TRUST_DIR, O_PATH, 1, &e);
	if (dir < 0) {
		if (e.unsafe)
			die(EXIT_REFUSE, "unsafe pins directory: %s %s", e.where, e.why);
		errno = e.err;
		die_with_error(EXIT_REFUSE, "cannot open the pins directory %s", e.where);
	}
	int fd = openat(dir, t->id, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	close_quietly(dir);
	if (fd < 0) {
		if (errno == ENOENT)
			die(EXIT_REFUSE, "pin %s is gone (its build has ended?)", t->id);
		die_with_error(EXIT_REFUSE, "cannot open pin %s", t->id);
	}
	char what[PIN_ID_MAX + 8];
	snprintf(what, sizeof what, "pin %s", t->id);
	netns_of_fd(fd, what, &id);
	if (id.dev != t->dev || id.ino != t->ino)
		die(EXIT_REFUSE, "pin %s holds another namespace than its tag names", t->id);
	if (t->nsid != 0) {
		uint64_t nsid = 0;
		if (ioctl(fd, CG_NS_GET_ID, &nsid) < 0)
			die_with_error(EXIT_REFUSE, "cannot read the namespace id of pin %s", t->id);
		if (nsid != t->nsid)
			die(EXIT_REFUSE, "pin %s: namespace id differs from its tag "
			    "(namespace replaced)", t->id);
	}
	return fd;
}
