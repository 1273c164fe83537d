/* compat.h: the few kernel ABI constants the helper needs.
 *
 * They are written out here instead of taken from <linux/...> because the
 * musl toolchain (musl-gcc) has no kernel headers on its include path; the
 * values are part of the stable kernel ABI. */
#ifndef CGNETNS_COMPAT_H
#define CGNETNS_COMPAT_H

#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

/* statfs f_type values */
#define CG_PROC_SUPER_MAGIC    0x9fa0
#define CG_CGROUP2_SUPER_MAGIC 0x63677270
#define CG_NSFS_MAGIC          0x6e736673

/* nsfs ioctls (linux/nsfs.h) */
#define CG_NSIO          0xb7
#define CG_NS_GET_NSTYPE _IO(CG_NSIO, 0x3)
#define CG_NS_GET_ID     _IOR(CG_NSIO, 0xd, uint64_t)   /* 0x8008b70d */

/* the nsfs inode number of the initial user namespace (linux/proc_ns.h) */
#define CG_PROC_USER_INIT_INO 0xEFFFFFFDU
/* include/linux/proc_ns.h: the initial cgroup namespace's fixed inode. */
#define CG_PROC_CGROUP_INIT_INO 0xEFFFFFFBU

/* openat2 (linux/openat2.h) */
struct cg_open_how {
	uint64_t flags;
	uint64_t mode;
	uint64_t resolve;
};
#define CG_RESOLVE_NO_XDEV       0x01
#define CG_RESOLVE_NO_MAGICLINKS 0x02
#define CG_RESOLVE_NO_SYMLINKS   0x04
#define CG_RESOLVE_BENEATH       0x08

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_execveat
#define SYS_execveat 322
#endif

/* capget (linux/capability.h) */
struct cg_cap_header {
	uint32_t version;
	int pid;
};
struct cg_cap_data {
	uint32_t effective;
	uint32_t permitted;
	uint32_t inheritable;
};
#define CG_CAP_VERSION_3 0x20080522
#define CG_CAP_SYS_ADMIN 21
#define CG_CAP_SYS_PTRACE 19

/* seccomp user notification (linux/seccomp.h, linux/filter.h, linux/audit.h).
 * SECCOMP_ADDFD_FLAG_SEND needs Linux 5.14. */
#define CG_SECCOMP_SET_MODE_FILTER          1
#define CG_SECCOMP_GET_NOTIF_SIZES          3
#define CG_SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#define CG_SECCOMP_RET_ALLOW                0x7fff0000U
#define CG_SECCOMP_RET_USER_NOTIF           0x7fc00000U
#define CG_SECCOMP_USER_NOTIF_FLAG_CONTINUE (1U << 0)
#define CG_SECCOMP_ADDFD_FLAG_SEND          (1U << 1)
struct cg_seccomp_data {
	int nr;
	uint32_t arch;
	uint64_t instruction_pointer;
	uint64_t args[6];
};
struct cg_seccomp_notif {
	uint64_t id;
	uint32_t pid;
	uint32_t flags;
	struct cg_seccomp_data data;
};
struct cg_seccomp_notif_resp {
	uint64_t id;
	int64_t val;
	int32_t error;
	uint32_t flags;
};
struct cg_seccomp_notif_addfd {
	uint64_t id;
	uint32_t flags;
	uint32_t srcfd;
	uint32_t newfd;
	uint32_t newfd_flags;
};
struct cg_seccomp_notif_sizes {
	uint16_t seccomp_notif;
	uint16_t seccomp_notif_resp;
	uint16_t seccomp_data;
};
#define CG_SECCOMP_IOCTL_NOTIF_RECV     _IOWR('!', 0, struct cg_seccomp_notif)
#define CG_SECCOMP_IOCTL_NOTIF_SEND     _IOWR('!', 1, struct cg_seccomp_notif_resp)
#define CG_SECCOMP_IOCTL_NOTIF_ID_VALID _IOW('!', 2, uint64_t)
#define CG_SECCOMP_IOCTL_NOTIF_ADDFD    _IOW('!', 3, struct cg_seccomp_notif_addfd)
struct cg_sock_filter {
	uint16_t code;
	uint8_t jt;
	uint8_t jf;
	uint32_t k;
};
struct cg_sock_fprog {
	unsigned short len;
	struct cg_sock_filter *filter;
};
#define CG_BPF_LD_W_ABS  0x20 /* BPF_LD | BPF_W | BPF_ABS */
#define CG_BPF_JEQ_K     0x15 /* BPF_JMP | BPF_JEQ | BPF_K */
#define CG_BPF_RET_K     0x06 /* BPF_RET | BPF_K */
#if defined(__x86_64__)
#define CG_AUDIT_ARCH 0xC000003EU /* AUDIT_ARCH_X86_64 */
#elif defined(__aarch64__)
#define CG_AUDIT_ARCH 0xC00000B7U /* AUDIT_ARCH_AARCH64 */
#else
#error "add this architecture's AUDIT_ARCH_* (linux/audit.h)"
#endif
#ifndef SYS_seccomp
#define SYS_seccomp 317
#endif

/* clone3 (linux/sched.h), CLONE_INTO_CGROUP since Linux 5.7 */
struct cg_clone_args {
	uint64_t flags;
	uint64_t pidfd;
	uint64_t child_tid;
	uint64_t parent_tid;
	uint64_t exit_signal;
	uint64_t stack;
	uint64_t stack_size;
	uint64_t tls;
	uint64_t set_tid;
	uint64_t set_tid_size;
	uint64_t cgroup;
};
#define CG_CLONE_INTO_CGROUP 0x200000000ULL
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* socket options (asm-generic/socket.h) */
#define CG_SO_PEERGROUPS 59
#define CG_SO_PEERPIDFD  77

#endif
