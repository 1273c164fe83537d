/* allow.c: the allow list and the program check.
 *
 * PROGRAM is either an absolute path, which must equal an entry exactly, or
 * a bare name, which matches the first entry with that basename.  Nothing
 * else: a relative name with a '/' is refused, and the caller's PATH is
 * never used.  The entry is then opened with open_trusted() (no symlinks,
 * every directory and the file root-owned and not group/other writable) and
 * the resulting fd is what exec.c runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

/* Static: the helper allocates nothing on its privileged path. */
static char allow_buf[ALLOW_MAX];
/* What allow_check_program() read as root with every owner check, for
 * allow_exe_set() in the same process: one reading of the list per request,
 * so the program checked and the set the supervisor compares with come from
 * the same text. */
static size_t allow_len;
static int allow_read_as_root;

/* Read the allow list into allow_buf; returns its length.  It may be mode
 * 0600: read with the privilege we have.  It is opened by fixed path from
 * "/", so the caller cannot substitute one (no symlink is followed, every
 * directory is root's). */
static size_t allow_read(int privileged, int check_owner)
{
	struct trust_error e;
	int fd = open_trusted(CGNETNS_ALLOW_PATH, TRUST_FILE,
			      O_RDONLY | O_NONBLOCK | O_NOCTTY, check_owner, &e);
	if (fd < 0) {
		if (e.unsafe)
			die(EXIT_REFUSE, "unsafe allow list %s: %s %s",
			    CGNETNS_ALLOW_PATH, e.where, e.why);
		errno = e.err;
		if (!privileged && e.err == EACCES)
			die(EXIT_REFUSE, "cannot read the allow list %s without privilege",
			    CGNETNS_ALLOW_PATH);
		die_with_error(EXIT_REFUSE, "allow list %s: cannot open %s",
			       CGNETNS_ALLOW_PATH, e.where);
	}
	ssize_t n = read_full(fd, allow_buf, sizeof allow_buf);
	close_quietly(fd);
	if (n < 0)
		die_with_error(EXIT_REFUSE, "cannot read the allow list %s", CGNETNS_ALLOW_PATH);
	if ((size_t)n > sizeof allow_buf)
		die(EXIT_REFUSE, "allow list %s is larger than %d bytes",
		    CGNETNS_ALLOW_PATH, ALLOW_MAX);
	return (size_t)n;
}

void allow_check_program(const char *program, int privileged, int check_owner,
			 struct program *out)
{
	struct trust_error e;
	size_t plen = strlen(program);

	if (plen == 0)
		die(EXIT_NOT_USABLE, "empty program name");
	if (plen >= CG_PATH_MAX)
		die(EXIT_NOT_USABLE, "program name too long");
	if (program[0] != '/' && strchr(program, '/'))
		die(EXIT_NOT_USABLE,
		    "%.200s: name a program by absolute path or bare name", program);

	size_t n = allow_read(privileged, check_owner);
	allow_len = n;
	allow_read_as_root = privileged && check_owner && geteuid() == 0;

	const char *entry;
	size_t elen;
	unsigned bad_line;
	switch (parse_allow(allow_buf, n, program, &entry, &elen, &bad_line)) {
	case PARSE_OK:
		break;
	case PARSE_NONE:
		die(EXIT_NOT_USABLE, "%.200s: not in the allow list; root may add its canonical "
		    "path to %s", program, CGNETNS_ALLOW_PATH);
	default:
		die(EXIT_REFUSE, "allow list %s, line %u: not a canonical absolute path; "
		    "write the program's real path (readlink -f) there", CGNETNS_ALLOW_PATH, bad_line);
	}
	memcpy(out->path, entry, elen);
	out->path[elen] = '\0';

	/* O_PATH: the file is only looked at and later executed through this
	 * fd, never read or opened in a way that has side effects. */
	out->fd = open_trusted(out->path, TRUST_FILE, O_PATH, check_owner, &e);
	if (out->fd < 0) {
		if (e.unsafe)
			die(EXIT_NOT_USABLE, "%s: not safe to run: %s %s",
			    out->path, e.where, e.why);
		errno = e.err;
		if (e.err == ENOENT)
			die(EXIT_NOT_FOUND, "%s: not found", out->path);
		die_with_error(EXIT_NOT_USABLE, "%s", e.where);
	}
}

/* The identities of every allow-listed executable (notify.c compares the
 * executable of each task that asks for a socket with them), each held
 * open, so that no other file can take its inode number while the
 * supervisor runs.  Called after allow_check_program(), which has checked
 * the whole list and read it (that text is used again).  An entry that is
 * missing or not safe to run is left out: it could not have been started
 * through the helper either. */
void allow_exe_set(struct exe_set *set)
{
	struct trust_error e;
	struct stat st;
	size_t len = allow_read_as_root ? allow_len : allow_read(1, 1), pos = 0, elen;
	unsigned lineno = 0;
	const char *entry;
	char path[CG_PATH_MAX];

	set->n = 0;
	while (parse_allow_next(allow_buf, len, &pos, &lineno, &entry, &elen) == PARSE_OK) {
		if (set->n == EXE_SET_MAX)
			die(EXIT_REFUSE, "allow list %s has more than %d entries",
			    CGNETNS_ALLOW_PATH, EXE_SET_MAX);
		memcpy(path, entry, elen);
		path[elen] = '\0';
		int fd = open_trusted(path, TRUST_FILE, O_PATH, 1, &e);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) < 0) {
			close_quietly(fd);
			continue;
		}
		set->e[set->n].fd = fd;
		set->e[set->n].dev = st.st_dev;
		set->e[set->n].ino = st.st_ino;
		set->n++;
	}
}
