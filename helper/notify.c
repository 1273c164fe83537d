/* notify.c: network for allow-listed executables only, by seccomp user
 * notification (Documentation/userspace-api/seccomp_filter.rst, "Userspace
 * Notification").
 *
 * The program runs as the caller's own process, under a seccomp filter that
 * sends its socket(AF_INET or AF_INET6, ...) calls to a supervisor.  The
 * supervisor has the caller's uid, gids and groups, no capability,
 * no_new_privs, is not dumpable (so the caller cannot ptrace it or read its
 * memory), sits in the caller's build cgroup and in the approved network
 * namespace.  For each call it checks that the calling task runs an
 * allow-listed executable and belongs to the build; then it creates the
 * socket itself -- in the approved namespace, with the caller's credentials
 * and the build's cgroup, as if the caller had made it there -- and installs
 * it in the caller atomically with the reply (SECCOMP_IOCTL_NOTIF_ADDFD with
 * SECCOMP_ADDFD_FLAG_SEND, Linux 5.14).  Every other call continues in the
 * caller's own namespace (SECCOMP_USER_NOTIF_FLAG_CONTINUE; safe here:
 * socket() takes no pointer the caller could change after the check).
 *
 * What stays where the caller is: every socket of a task whose executable is
 * not on the allow list (distcc's children: the compiler, `distcc python3 -c`,
 * gcc's -wrapper), every address family but AF_INET and AF_INET6 (unix
 * sockets, netlink), and every way of making a socket that is not the native
 * socket(2) (socketcall of a 32-bit task, io_uring): none of them reaches the
 * approved namespace, so none needs a check.
 *
 * Degrades: no listener (kernel < 5.0, or one already in the caller's filter
 * chain: the kernel allows one) or no SECCOMP_ADDFD_FLAG_SEND (< 5.14): the
 * request is refused with one line (125).  Nothing falls back to acting as
 * the caller. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

/* Offset of the low 32 bits of args[0] (socket's domain, an int). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG0_LO offsetof(struct cg_seccomp_data, args[0])
#else
#define ARG0_LO (offsetof(struct cg_seccomp_data, args[0]) + 4)
#endif

int notify_install_filter(void)
{
	/* socket(AF_INET|AF_INET6, ...) of this architecture goes to the
	 * supervisor; everything else is allowed, and so creates what it
	 * creates in the caller's own namespace. */
	struct cg_sock_filter f[] = {
		{ CG_BPF_LD_W_ABS, 0, 0, offsetof(struct cg_seccomp_data, arch) },
		{ CG_BPF_JEQ_K, 0, 5, CG_AUDIT_ARCH },
		{ CG_BPF_LD_W_ABS, 0, 0, offsetof(struct cg_seccomp_data, nr) },
		{ CG_BPF_JEQ_K, 0, 3, SYS_socket },
		{ CG_BPF_LD_W_ABS, 0, 0, ARG0_LO },
		{ CG_BPF_JEQ_K, 2, 0, AF_INET },
		{ CG_BPF_JEQ_K, 1, 0, AF_INET6 },
		{ CG_BPF_RET_K, 0, 0, CG_SECCOMP_RET_ALLOW },
		{ CG_BPF_RET_K, 0, 0, CG_SECCOMP_RET_USER_NOTIF },
	};
	struct cg_sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };

	/* Without CAP_SYS_ADMIN the kernel requires no_new_privs for a filter
	 * (so that no set-user-ID program runs under a filter its caller
	 * wrote); Gentoo's sandbox has set it already. */
	if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 &&
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die_with_error(EXIT_REFUSE, "cannot set no_new_privs");
	int fd = (int)syscall(SYS_seccomp, CG_SECCOMP_SET_MODE_FILTER,
			      CG_SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	if (fd < 0) {
		if (errno == EBUSY)
			die(EXIT_REFUSE, "this process already has a seccomp listener in its "
			    "filter chain (the kernel allows one): run the program outside "
			    "that supervisor");
		if (errno == EINVAL || errno == ENOSYS)
			die(EXIT_REFUSE, "no seccomp user notification on this kernel "
			    "(Linux 5.14 or newer is needed for the broker path)");
		die_with_error(EXIT_REFUSE, "cannot install the seccomp filter");
	}
	/* The filter also sends our own socket() calls now: nothing below
	 * makes an AF_INET or AF_INET6 socket before the exec. */
	return fd;
}

int notify_is_listener(int fd)
{
	char path[64], link[64];
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof link - 1);
	if (n < 0)
		return 0;
	link[n] = '\0';
	return strcmp(link, "anon_inode:seccomp notify") == 0;
}

int notify_can_send_fds(int listener)
{
	/* An ADDFD for a notification that does not exist: Linux >= 5.14
	 * validates SECCOMP_ADDFD_FLAG_SEND and answers ENOENT; older kernels
	 * reject the flag (EINVAL) or the ioctl (ENOTTY, before 5.9). */
	struct cg_seccomp_notif_addfd a;
	memset(&a, 0, sizeof a);
	a.id = ~0ULL;
	a.flags = CG_SECCOMP_ADDFD_FLAG_SEND;
	a.srcfd = 0;
	return ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_ADDFD, &a) < 0 && errno == ENOENT;
}

/* ---- the supervisor ---- */

/* Become the supervisor's self: in the approved namespace, then the caller
 * for good.  Called in a process made for the purpose (the caller's build
 * cgroup holds it already). */
void notify_enter(int pin_fd, const char *pin_id, const struct caller *c)
{
	/* 1. The approved namespace, through the verified pin, while still
	 * root in the initial user namespace (which owns it).  Sockets made
	 * from now on belong to it. */
	if (setns(pin_fd, CLONE_NEWNET) < 0)
		die_with_error(EXIT_REFUSE, "cannot join the approved network namespace of %s",
			       pin_id);
	close_quietly(pin_fd);

	/* 2. The caller's ids and groups as real, effective and saved ids,
	 * dropped for good and verified (drop.c).  A minted socket carries
	 * these (netlink and raw sockets check the opener's), never root's:
	 * the caller could have made such a socket itself. */
	drop_privileges(c);
	/* ... and no capability, also for a root caller (drop.c). */
	drop_capabilities();

	/* 3. Nothing it runs gains privilege, and neither the caller nor
	 * anyone else of its uid may ptrace this process or read its memory:
	 * ptrace_may_access() refuses a same-uid process when the target is
	 * not dumpable.  (The credential change has made it so already where
	 * fs.suid_dumpable is 0; this says it for every setting.) */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die_with_error(EXIT_REFUSE, "cannot set no_new_privs");
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

void notify_send_listener(int sock, int listener)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	char byte = 'L';
	struct iovec iov = { &byte, 1 };
	struct msghdr msg;
	memset(&msg, 0, sizeof msg);
	memset(&cm, 0, sizeof cm);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cm.buf;
	msg.msg_controllen = sizeof cm.buf;
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &listener, sizeof(int));
	ssize_t w;
	do
		w = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	if (w != 1)
		die_with_error(EXIT_REFUSE, "cannot send the seccomp listener to the broker");
}

/* The client's listener: one byte with one descriptor on sock.  `what`
 * starts the refusal messages. */
int notify_receive_listener(int sock, const char *what)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	char byte;
	struct iovec iov = { &byte, 1 };
	struct msghdr msg;
	ssize_t r;
	memset(&msg, 0, sizeof msg);
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = cm.buf;
	msg.msg_controllen = sizeof cm.buf;
	do
		r = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r != 1)
		die(EXIT_REFUSE, "client went away before sending its listener");
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	if ((msg.msg_flags & MSG_CTRUNC) || !c || c->cmsg_level != SOL_SOCKET ||
	    c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof(int)))
		die(EXIT_REFUSE, "%sexpected one seccomp listener", what);
	int fd;
	memcpy(&fd, CMSG_DATA(c), sizeof fd);
	if (!notify_is_listener(fd))
		die(EXIT_REFUSE, "%sthe descriptor sent is not a seccomp listener", what);
	return fd;
}



static char cg_buf[PROC_CGROUP_MAX];

/* Is the task a member of the build: its 0:: path (as this process's
 * cgroup namespace shows it, which is the resolver's) at or below the
 * tagged cgroup's path? */
static int task_in_build(int proc_fd, unsigned pid, const struct supervision *sv)
{
	char name[32];
	snprintf(name, sizeof name, "%u/cgroup", pid);
	int fd = openat(proc_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read_full(fd, cg_buf, sizeof cg_buf);
	close_quietly(fd);
	if (n < 0 || (size_t)n > sizeof cg_buf)
		return 0;
	const char *path;
	size_t plen;
	if (parse_cgroup_file(cg_buf, (size_t)n, &path, &plen) != PARSE_OK)
		return 0;
	if (sv->build_len == 0)
		return 1; /* the tag is on the cgroup2 root */
	return plen >= sv->build_len && memcmp(path, sv->build, sv->build_len) == 0 &&
	       (plen == sv->build_len || path[sv->build_len] == '/');
}

/* Does the task run an allow-listed executable?  Compared by identity with
 * the files the allow list named, which this process holds open (so their
 * inode numbers cannot be reused while it runs). */
static int task_runs_allowed(int proc_fd, unsigned pid, const struct supervision *sv)
{
	char name[32];
	struct stat st;
	snprintf(name, sizeof name, "%u/exe", pid);
	/* fstatat follows the magic link to the executable itself.  A task
	 * that is not dumpable (it made itself so) cannot be looked at with
	 * the caller's ids: EACCES, and it gets no minted socket. */
	if (fstatat(proc_fd, name, &st, 0) < 0)
		return 0;
	for (int i = 0; i < sv->allowed.n; i++)
		if (sv->allowed.e[i].dev == st.st_dev && sv->allowed.e[i].ino == st.st_ino)
			return 1;
	return 0;
}

static void answer(int listener, const struct cg_seccomp_notif_resp *r)
{
	/* ENOENT: the task was interrupted (killed) meanwhile; nothing to do. */
	if (ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_SEND, r) < 0 && errno != ENOENT)
		die_with_error(EXIT_REFUSE, "seccomp answer");
}

void notify_serve(int listener, int proc_fd, const struct supervision *sv)
{
	struct cg_seccomp_notif req;
	struct cg_seccomp_notif_resp resp;

	for (;;) {
		/* POLLHUP: no task uses the filter any more (Linux >= 5.8): done. */
		struct pollfd p = { listener, POLLIN, 0 };
		if (poll(&p, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			die_with_error(EXIT_REFUSE, "poll");
		}
		if (!(p.revents & POLLIN))
			_exit(0);
		memset(&req, 0, sizeof req);
		if (ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
			if (errno == EINTR || errno == ENOENT)
				continue; /* the task went away before we read it */
			die_with_error(EXIT_REFUSE, "seccomp receive");
		}
		memset(&resp, 0, sizeof resp);
		resp.id = req.id;

		/* The listener is the caller's: a filter the caller wrote may send
		 * any call here.  Only the native socket() of AF_INET or AF_INET6
		 * is ever made in the approved namespace -- never an AF_UNIX socket
		 * (abstract names are per network namespace), netlink or packet. */
		int domain = (int)(uint32_t)req.data.args[0];
		int granted = req.data.nr == SYS_socket && req.data.arch == CG_AUDIT_ARCH &&
			      (domain == AF_INET || domain == AF_INET6) &&
			      task_runs_allowed(proc_fd, req.pid, sv) &&
			      task_in_build(proc_fd, req.pid, sv);
		/* The checks read /proc/<pid>: still the same task, blocked in
		 * this very call?  Otherwise its pid may name another by now. */
		if (ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) < 0)
			continue;
		if (!granted) {
			resp.flags = CG_SECCOMP_USER_NOTIF_FLAG_CONTINUE;
			answer(listener, &resp);
			continue;
		}
		int type = (int)req.data.args[1];
		int fd = socket(domain, type | SOCK_CLOEXEC, (int)req.data.args[2]);
		if (fd < 0) {
			resp.error = -errno;
			answer(listener, &resp);
			continue;
		}
		struct cg_seccomp_notif_addfd a;
		memset(&a, 0, sizeof a);
		a.id = req.id;
		a.flags = CG_SECCOMP_ADDFD_FLAG_SEND;
		a.srcfd = (uint32_t)fd;
		a.newfd_flags = (type & SOCK_CLOEXEC) ? O_CLOEXEC : 0;
		if (ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_ADDFD, &a) < 0 && errno != ENOENT) {
			/* EMFILE in the task, for one: it gets the error. */
			resp.error = -errno;
			answer(listener, &resp);
		}
		close_quietly(fd);
	}
}
