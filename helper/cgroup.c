/* cgroup.c: the subject's cgroup2 directory and the walk up to the tag.
 *
 * Steps 1-4 of the resolution rule in doc/FORMAT.rst.  Everything is
 * checked on opened fds: the filesystem type with fstatfs(), the identity
 * with fstat().  The tag is read with fgetxattr() while privileged and only
 * from the trusted.* namespace, which only CAP_SYS_ADMIN can write. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

static char cg_file[PROC_CGROUP_MAX];
static char cg_rel[CG_PATH_MAX]; /* subject's cgroup, relative to the root */

/* Step 1: the 0:: line of the subject's /proc/PID/cgroup. */
static void read_subject_cgroup(const struct subject *s)
{
	int fd = openat(s->proc_fd, "cgroup", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open /proc/%d/cgroup", (int)s->pid);
	if (!fd_on_fs(fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc/%d/cgroup is not on procfs", (int)s->pid);
	ssize_t n = read_full(fd, cg_file, sizeof cg_file);
	close_quietly(fd);
	if (n < 0)
		die_with_error(EXIT_REFUSE, "cannot read /proc/%d/cgroup", (int)s->pid);
	if ((size_t)n > sizeof cg_file)
		die(EXIT_REFUSE, "/proc/%d/cgroup is too long", (int)s->pid);

	const char *path;
	size_t plen;
	switch (parse_cgroup_file(cg_file, (size_t)n, &path, &plen)) {
	case PARSE_OK:
		break;
	case PARSE_NONE:
		die(EXIT_REFUSE, "no cgroup2 (0::) line in /proc/%d/cgroup: "
		    "a cgroup v1-only host is not supported, cgnetns needs cgroup2",
		    (int)s->pid);
	default:
		die(EXIT_REFUSE, "unusable cgroup2 path in /proc/%d/cgroup "
		    "(outside its cgroup namespace?)", (int)s->pid);
	}
	memcpy(cg_rel, path, plen);
	cg_rel[plen] = '\0';
}

/* The cgroup2 root: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified
 * (hybrid), decided by the filesystem type of the opened directory. */
int cgroup2_open_root(void)
{
	static const char *const where[] = { "/sys/fs/cgroup", "/sys/fs/cgroup/unified" };
	for (size_t i = 0; i < sizeof where / sizeof where[0]; i++) {
		int fd = openat(AT_FDCWD, where[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fd_on_fs(fd, CG_CGROUP2_SUPER_MAGIC))
			return fd;
		close_quietly(fd);
	}
	die(EXIT_REFUSE, "cgroup2 is mounted neither at /sys/fs/cgroup nor at "
	    "/sys/fs/cgroup/unified (cgroup v1-only host?): cgnetns needs cgroup2");
}

/* Step 2: open rel beneath root without following symlinks, magic links or
 * leaving the mount.  openat2() does it in one call; where the kernel (or a
 * seccomp filter) lacks it, one openat(O_NOFOLLOW) per component with the
 * device checked.  ".." cannot appear: parse_cgroup_file() refuses it. */
static int open_beneath(int root, const struct stat *rootst, const char *rel)
{
	if (rel[0] == '\0')
		return openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	struct cg_open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
		.mode = 0,
		.resolve = CG_RESOLVE_BENEATH | CG_RESOLVE_NO_SYMLINKS |
			   CG_RESOLVE_NO_XDEV | CG_RESOLVE_NO_MAGICLINKS,
	};
	int fd = (int)syscall(SYS_openat2, root, rel, &how, sizeof how);
	if (fd >= 0 || (errno != ENOSYS && errno != EPERM))
		return fd;

	int cur = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	const char *p = rel;
	while (cur >= 0 && *p) {
		char name[256];
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		if (len == 0 || len >= sizeof name) {
			close_quietly(cur);
			errno = EINVAL;
			return -1;
		}
		memcpy(name, p, len);
		name[len] = '\0';
		int next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close_quietly(cur);
		struct stat st;
		if (next >= 0 && (fstat(next, &st) < 0 || st.st_dev != rootst->st_dev)) {
			close_quietly(next);
			errno = EXDEV;
			return -1;
		}
		cur = next;
		p += len + (slash ? 1 : 0);
	}
	return cur;
}

/* Step 2, second half: the subject is listed in cgroup.procs.  Defeats a
 * path that means something else in the subject's cgroup namespace or a
 * cgroup2 mount that is not the one its path is relative to. */
static int lists_pid(int cg, pid_t pid)
{
	int fd = openat(cg, "cgroup.procs", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open cgroup.procs of /%s", cg_rel);
	if (!fd_on_fs(fd, CG_CGROUP2_SUPER_MAGIC))
		die(EXIT_REFUSE, "cgroup.procs of /%s is not on cgroup2", cg_rel);

	char buf[4096];
	unsigned long long v = 0;
	int digits = 0, found = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die_with_error(EXIT_REFUSE, "cannot read cgroup.procs of /%s", cg_rel);
		if (r == 0)
			break;
		for (ssize_t i = 0; i < r; i++) {
			char c = buf[i];
			if (c >= '0' && c <= '9' && digits < 12) {
				v = v * 10 + (unsigned)(c - '0');
				digits++;
			} else if (c == '\n' && digits > 0) {
				if (v == (unsigned long long)pid)
					found = 1;
				v = 0;
				digits = 0;
			} else {
				die(EXIT_REFUSE, "malformed cgroup.procs in /%s", cg_rel);
			}
		}
	}
	close_quietly(fd);
	if (digits)
		die(EXIT_REFUSE, "malformed cgroup.procs in /%s", cg_rel);
	return found;
}

/* The first `keep` bytes of cg_rel that name the ancestor `up` levels
 * above the subject's cgroup (for messages). */
static int ancestor_len(int up)
{
	int len = (int)strlen(cg_rel);
	while (up-- > 0 && len > 0) {
		while (len > 0 && cg_rel[len - 1] != '/')
			len--;
		if (len > 0)
			len--;
	}
	return len;
}

/* 1 when this process is in the initial cgroup namespace (its nsfs inode
 * is the fixed PROC_CGROUP_INIT_INO); 0 when it is not or cannot be told.
 * The reader's namespace is the one that matters: /proc/PID/cgroup shows
 * paths relative to the cgroup namespace of the process reading it (the
 * helper itself on the set-user-ID path, the supervisor, in the broker's, for the
 * broker's peer). */
static int reader_in_initial_cgroupns(void)
{
	struct stat st;
	int fd = openat(AT_FDCWD, "/proc/self/ns/cgroup", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	int ok = fd_on_fs(fd, CG_NSFS_MAGIC) && fstat(fd, &st) == 0 &&
		 st.st_ino == CG_PROC_CGROUP_INIT_INO;
	close_quietly(fd);
	return ok;
}

static size_t tagged_len;

const char *cgroup_tagged_path(size_t *len)
{
	*len = tagged_len;
	return cg_rel;
}

/* fcntl(fd, F_DUPFD_CLOEXEC, 3) without musl's extra fcntl(F_SETFD). */
static int dup_cloexec(int fd)
{
	return (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 3);
}

/* Step 3's end: the first trusted.cgnetns on the walk, `up` levels above the
 * subject's cgroup (r: fgetxattr's result, val its value).  Membership is
 * checked first, then step 4 (the tagged directory is root's), then the
 * strict parse into *t.  Refuses (exits) on every failed check. */
static void take_tag(const struct subject *s, int cg, int leaf, int up,
		     const char *val, ssize_t r, struct tag *t)
{
	struct stat st;
	int alen = ancestor_len(up);
	int saved = errno;
	if (!lists_pid(leaf, s->pid))
		die(EXIT_REFUSE, "process %d is not in cgroup /%s of the cgroup2 "
		    "mount (cgroup namespace or mount mismatch)", (int)s->pid, cg_rel);
	close_quietly(leaf);
	errno = saved;
	if (r < 0 || r > TAG_MAX)
		die(EXIT_REFUSE, "tag of cgroup /%.*s is longer than %d bytes",
		    alen, cg_rel, TAG_MAX);
	/* Step 4: a tagged directory that root does not own could have
	 * processes moved into it by its owner. */
	if (fstat(cg, &st) < 0)
		die_with_error(EXIT_REFUSE, "cannot stat cgroup /%.*s", alen, cg_rel);
	if (st.st_uid != 0)
		die(EXIT_REFUSE, "tagged cgroup /%.*s is not owned by root", alen, cg_rel);
	switch (parse_tag(val, (size_t)r, t)) {
	case PARSE_OK:
		tagged_len = (size_t)alen;
		return;
	case PARSE_VERSION:
		die(EXIT_REFUSE, "tag of cgroup /%.*s has an unsupported "
		    "format version (this helper reads v1)", alen, cg_rel);
	default:
		die(EXIT_REFUSE, "malformed tag on cgroup /%.*s", alen, cg_rel);
	}
}

int cgroup_find_tag(const struct subject *s, struct tag *t)
{
	struct stat rootst, st;

	read_subject_cgroup(s);
	int root = cgroup2_open_root();
	if (fstat(root, &rootst) < 0)
		die_with_error(EXIT_REFUSE, "cannot stat the cgroup2 root");

	int cg = open_beneath(root, &rootst, cg_rel);
	if (cg < 0)
		die_with_error(EXIT_REFUSE, "cannot open cgroup /%s beneath the cgroup2 root", cg_rel);
	if (!fd_on_fs(cg, CG_CGROUP2_SUPER_MAGIC) || fstat(cg, &st) < 0 ||
	    st.st_dev != rootst.st_dev)
		die(EXIT_REFUSE, "cgroup /%s is not on the cgroup2 mount", cg_rel);
	/* Step 2's membership check (lists_pid).  In the initial cgroup
	 * namespace the 0:: path is absolute, so it is made once a tag is found,
	 * before anything is decided by it: without a tag the answer is
	 * pass-through whatever cgroup the path named, and reading a busy
	 * cgroup's cgroup.procs (the root's on a host without systemd) would be
	 * the most expensive step of a call outside any build.  In any other
	 * cgroup namespace the path is relative to that namespace's root and
	 * may name another cgroup of this mount: check at once and say so. */
	int leaf = dup_cloexec(cg);
	if (leaf < 0)
		die_with_error(EXIT_REFUSE, "cannot keep cgroup /%s", cg_rel);
	if (!reader_in_initial_cgroupns() && !lists_pid(leaf, s->pid))
		die(EXIT_REFUSE, "process %d is not in cgroup /%s of the cgroup2 mount "
		    "(cgroup namespace or mount mismatch)", (int)s->pid, cg_rel);
	/* The broker's supervisor is started in this very (checked) directory. */
	if (s->cg_out) {
		*s->cg_out = dup_cloexec(cg);
		if (*s->cg_out < 0)
			die_with_error(EXIT_REFUSE, "cannot keep cgroup /%s", cg_rel);
	}

	/* Step 3: walk up to (and including) the root; the first trusted.cgnetns
	 * wins.  Bounded: a path of CG_PATH_MAX bytes has fewer levels. */
	for (int up = 0; up < CG_PATH_MAX / 2; up++) {
		char val[TAG_MAX + 1];
		ssize_t r = fgetxattr(cg, CGNETNS_TAG_XATTR, val, sizeof val);
		if (r >= 0 || errno == ERANGE) {
			take_tag(s, cg, leaf, up, val, r, t);
			close_quietly(cg);
			close_quietly(root);
			return 1;
		}
		if (errno != ENODATA)
			die_with_error(EXIT_REFUSE, "cannot read the tag of cgroup /%.*s",
				       ancestor_len(up), cg_rel);
		if (fstat(cg, &st) < 0)
			die_with_error(EXIT_REFUSE, "cannot stat a cgroup");
		if (st.st_dev == rootst.st_dev && st.st_ino == rootst.st_ino) {
			close_quietly(cg);
			close_quietly(root);
			close_quietly(leaf);
			return 0; /* no tag up to the root: not in a build */
		}
		int parent = openat(cg, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close_quietly(cg);
		cg = parent;
		if (cg < 0 || !fd_on_fs(cg, CG_CGROUP2_SUPER_MAGIC) || fstat(cg, &st) < 0 ||
		    st.st_dev != rootst.st_dev)
			die(EXIT_REFUSE, "walking up from cgroup /%s left the cgroup2 mount", cg_rel);
	}
	die(EXIT_REFUSE, "cgroup /%s is nested too deep", cg_rel);
}
