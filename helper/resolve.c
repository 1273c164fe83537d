/* resolve.c: the resolution rule of doc/FORMAT.rst for one subject.
 *
 * The subject is a process named by an fd of its /proc/<pid> directory and
 * its pid.  The helper resolves for itself (/proc/self); a later mode that
 * acts for another process (the broker, real uid 0 only) passes that
 * process's directory instead and reuses everything here and below. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

void subject_self(struct subject *s)
{
	int fd = openat(AT_FDCWD, "/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die_with_error(EXIT_REFUSE, "cannot open /proc/self");
	/* Only the real procfs tells the truth about this process. */
	if (!fd_on_fs(fd, CG_PROC_SUPER_MAGIC))
		die(EXIT_REFUSE, "/proc is not procfs");
	s->proc_fd = fd;
	s->pid = getpid();
	s->cg_out = NULL;
}

void resolve(const struct subject *s, struct verdict *v)
{
	struct ns_ident pin_id, own_id;

	v->kind = VERDICT_NONE;
	v->pin_fd = -1;

	/* Step 0, one rule for both paths: the subject reads its cgroup file in
	 * the resolver's cgroup namespace.  /proc/PID/cgroup shows paths
	 * relative to the reader's namespace; a subject in another one (made
	 * with unshare -C, which needs a user namespace, so always a broker
	 * peer) would be judged by a path it does not see.  Refused, as the
	 * set-user-ID path refuses a path that does not name its cgroup. */
	if (s->pid != getpid()) {
		struct stat a, b;
		int fa = openat(s->proc_fd, "ns/cgroup", O_RDONLY | O_CLOEXEC);
		int fb = openat(AT_FDCWD, "/proc/self/ns/cgroup", O_RDONLY | O_CLOEXEC);
		int ok = fa >= 0 && fb >= 0 && fstat(fa, &a) == 0 && fstat(fb, &b) == 0;
		close_quietly(fa);
		close_quietly(fb);
		if (!ok)
			die_with_error(EXIT_REFUSE, "cannot compare the cgroup namespace of process %d",
				       (int)s->pid);
		if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
			die(EXIT_REFUSE, "process %d is in a cgroup namespace of its own: its cgroup "
			    "cannot be told; call the program from the build's own cgroup namespace",
			    (int)s->pid);
	}

	/* Steps 1-4: cgroup, membership, nearest tag, tagged dir owned by root. */
	if (!cgroup_find_tag(s, &v->tag))
		return; /* in no build: pass-through */

	/* Step 5: the pin, verified against the tag. */
	int pin = pin_open_verified(&v->tag);
	netns_of_fd(pin, "the pin", &pin_id);

	/* Step 6: already in the approved namespace? */
	int own = openat(s->proc_fd, "ns/net", O_RDONLY | O_CLOEXEC);
	if (own < 0)
		die_with_error(EXIT_REFUSE, "cannot open the network namespace of process %d",
			       (int)s->pid);
	netns_of_fd(own, "the process's network namespace", &own_id);
	close_quietly(own);
	if (own_id.dev == pin_id.dev && own_id.ino == pin_id.ino) {
		close_quietly(pin);
		v->kind = VERDICT_ALREADY;
		return;
	}
	v->kind = VERDICT_JOIN;
	v->pin_fd = pin;
}
