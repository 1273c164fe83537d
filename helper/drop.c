/* drop.c: the caller's credentials and the privilege drop.
 *
 * The drop is the order that cannot be undone: supplementary groups, then
 * the three gids, then the three uids (after setresuid() nothing may change
 * groups any more).  It is then verified, not assumed: the ids are read
 * back, regaining root must fail, and no capability may be left. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define GROUPS_MAX 65536 /* the kernel's NGROUPS_MAX */
static gid_t caller_groups[GROUPS_MAX];
static gid_t check_groups[GROUPS_MAX];

void caller_get(struct caller *c)
{
	if (getresuid(&c->ruid, &c->euid, &c->suid) < 0 ||
	    getresgid(&c->rgid, &c->egid, &c->sgid) < 0)
		die_with_error(EXIT_REFUSE, "cannot read own credentials");
	/* A set-user-ID exec leaves the supplementary groups as they were:
	 * these are the caller's. */
	int n = getgroups(GROUPS_MAX, caller_groups);
	if (n < 0)
		die_with_error(EXIT_REFUSE, "cannot read supplementary groups");
	c->ngroups = n;
	c->groups = caller_groups;
	c->groups_preset = 0;
}

static int capget_self(struct cg_cap_data d[2])
{
	struct cg_cap_header h = { CG_CAP_VERSION_3, 0 };
	memset(d, 0, 2 * sizeof d[0]);
	return (int)syscall(SYS_capget, &h, d);
}

/* 1 when this process is in the initial user namespace, whose nsfs inode
 * number is fixed (PROC_USER_INIT_INO, since Linux 3.8).  When it cannot be
 * told (no /proc), say yes: the privileged path then refuses on its own. */
int in_initial_userns(void)
{
	struct stat st;
	int fd = openat(AT_FDCWD, "/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 1;
	int r = fstat(fd, &st);
	int nsfs = fd_on_fs(fd, CG_NSFS_MAGIC);
	close_quietly(fd);
	if (r < 0 || !nsfs)
		return 1;
	return st.st_ino == CG_PROC_USER_INIT_INO;
}

/* Privilege is effective root holding CAP_SYS_ADMIN in the initial user
 * namespace: reading trusted.* and setns() into root's namespace need it.
 * Root of a user namespace, or effective root without the capability (a
 * reduced bounding set, SECBIT_NOROOT), is not privileged. */
int have_privilege(uid_t euid)
{
	struct cg_cap_data d[2];
	if (euid != 0 || capget_self(d) < 0)
		return 0;
	if (!((d[0].effective >> CG_CAP_SYS_ADMIN) & 1))
		return 0;
	return in_initial_userns();
}

/* The target ids are c->ruid and c->rgid (real = effective = saved): the
 * set-user-ID path passes the caller's own, the broker's supervisor the ids
 * the kernel recorded for its peer at connect (supervise.c).  groups_preset:
 * the groups were set already and are only verified. */
void drop_privileges(const struct caller *c)
{
	/* Groups first, while setgroups() is still permitted.  They are the
	 * caller's already; setting them states it instead of assuming it.
	 * Without CAP_SETGID (root in a container whose bounding set lacks it)
	 * this fails with EPERM: the check below then proves they are right. */
	if (!c->groups_preset && setgroups((size_t)c->ngroups, c->groups) < 0 && errno != EPERM)
		die_with_error(EXIT_REFUSE, "setgroups");
	/* gids before uids: once the uids are the caller's, the gids could no
	 * longer be changed. */
	if (setresgid(c->rgid, c->rgid, c->rgid) < 0)
		die_with_error(EXIT_REFUSE, "setresgid");
	if (setresuid(c->ruid, c->ruid, c->ruid) < 0)
		die_with_error(EXIT_REFUSE, "setresuid");

	/* Verify. */
	uid_t r, e, s;
	gid_t rg, eg, sg;
	if (getresuid(&r, &e, &s) < 0 || r != c->ruid || e != c->ruid || s != c->ruid ||
	    getresgid(&rg, &eg, &sg) < 0 || rg != c->rgid || eg != c->rgid || sg != c->rgid)
		die(EXIT_REFUSE, "privilege drop failed: ids not the caller's");
	int n = getgroups(GROUPS_MAX, check_groups);
	if (n != c->ngroups ||
	    memcmp(check_groups, c->groups, (size_t)n * sizeof(gid_t)) != 0)
		die(EXIT_REFUSE, "privilege drop failed: groups not the caller's");
	if (c->ruid != 0) {
		if (setuid(0) == 0 || seteuid(0) == 0 || setresuid(0, 0, 0) == 0)
			die(EXIT_REFUSE, "privilege drop failed: root could be regained");
		struct cg_cap_data d[2];
		if (capget_self(d) < 0)
			die_with_error(EXIT_REFUSE, "capget");
		/* Securebits such as SECBIT_NO_SETUID_FIXUP, set by an ancestor,
		 * would keep capabilities across setresuid(): refuse. */
		if (d[0].effective | d[0].permitted | d[1].effective | d[1].permitted)
			die(EXIT_REFUSE, "privilege drop failed: capabilities left");
	}
	if (c->ruid != 0 && c->rgid != 0) {
		if (setgid(0) == 0 || setegid(0) == 0)
			die(EXIT_REFUSE, "privilege drop failed: group root could be regained");
	}
}

/* No capability, whoever the ids are (notify.c, the supervisor).  A root
 * caller's supervisor keeps uid 0 but, of root's capabilities, only
 * CAP_SYS_PTRACE: reading /proc/PID/exe of a root task needs it
 * (commoncap's ptrace rule wants the reader's permitted set to cover the
 * target's), and no socket right comes from it -- a raw socket or a netlink
 * change needs CAP_NET_RAW or CAP_NET_ADMIN.  So every socket made has no
 * more than the least privileged caller could make, whatever the caller's
 * own bounding set was.  Then verified, as drop_privileges() verifies. */
void drop_capabilities(void)
{
	struct cg_cap_data d[2];
	uint32_t keep = 0;
	if (geteuid() == 0) {
		keep = 1U << CG_CAP_SYS_PTRACE;
		/* The bounding set first (needs CAP_SETPCAP, which we still
		 * have), so that nothing can bring a capability back; EINVAL
		 * past the kernel's last capability. */
		for (int cap = 0; cap < 64; cap++)
			if (cap != CG_CAP_SYS_PTRACE && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 &&
			    errno != EINVAL)
				die_with_error(EXIT_REFUSE, "cannot drop capability %d", cap);
	}
	/* Ambient and inheritable too, for every caller: cgnetnsd may have been
	 * started with inheritable capabilities (OpenRC's capabilities=, a
	 * container's payload), which setresuid() leaves.  Lowering them needs
	 * no privilege. */
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	struct cg_cap_header h = { CG_CAP_VERSION_3, 0 };
	memset(d, 0, sizeof d);
	d[0].effective = d[0].permitted = keep;
	if (syscall(SYS_capset, &h, d) < 0)
		die_with_error(EXIT_REFUSE, "cannot clear capabilities");
	if (capget_self(d) < 0)
		die_with_error(EXIT_REFUSE, "capget");
	if (d[0].effective != keep || d[0].permitted != keep || d[0].inheritable ||
	    d[1].effective | d[1].permitted | d[1].inheritable)
		die(EXIT_REFUSE, "privilege drop failed: capabilities left in the supervisor");
}
