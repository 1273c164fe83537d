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

#endif
