/* helper.h: declarations shared by the files of cgnetns-exec.
 *
 * One job per file:
 *   main.c    modes, argument handling, the order of the steps
 *   parse.c   pure parsers (cgroup file, tag, allow list): no I/O, fuzzed
 *   path.c    open a root-owned path from / without following symlinks
 *   allow.c   the allow list and the program check
 *   cgroup.c  the subject's cgroup and the walk up to the tag
 *   pin.c     the pin and namespace identities
 *   resolve.c the resolution rule of doc/FORMAT.rst, for one subject
 *   drop.c    the caller's credentials and the privilege drop
 *   env.c     the environment handed to the program
 *   exec.c    the exec of the checked program
 *   client.c  without privilege: the request to the broker (doc/BROKER.rst)
 *   notify.c  the seccomp filter, and the supervisor that mints sockets
 *   supervise.c --supervise: the broker's side of a request (real root only)
 *   spawner.c --fork-server: a --supervise child per connection cgnetnsd sends
 *   front.c   main() of the dynamic, non-set-user-ID front cgnetns-exec
 *   util.c    messages and exit
 *
 * Files are opened with openat(AT_FDCWD, ...), never open(): musl's open()
 * follows every O_CLOEXEC open with an fcntl(F_SETFD) (for kernels before
 * 2.6.23), and its fcntl(F_DUPFD_CLOEXEC) likewise (cgroup.c's dup_cloexec()
 * goes to the kernel directly).  Each system call saved is one fewer on the broker's
 * path, which makes about 170 a request for its checks.
 */
#ifndef CGNETNS_HELPER_H
#define CGNETNS_HELPER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

/* Exit statuses, as in DESIGN.md's contract (and env(1), nice(1)). */
#define EXIT_REFUSE     125 /* a check failed: nothing run */
#define EXIT_NOT_USABLE 126 /* PROGRAM not allow-listed or not safe to run */
#define EXIT_NOT_FOUND  127 /* PROGRAM not found */

#ifndef CGNETNS_ALLOW_PATH
#define CGNETNS_ALLOW_PATH "/etc/cgnetns/allow"
#endif
#ifndef CGNETNS_PINS_DIR
#define CGNETNS_PINS_DIR "/run/cgnetns/pins"
#endif
#ifndef CGNETNS_BROKER_SOCKET
#define CGNETNS_BROKER_SOCKET "/run/cgnetns/cgnetnsd.sock"
#endif
#ifndef CGNETNS_HELPER_PATH
#define CGNETNS_HELPER_PATH "/usr/local/lib/cgnetns/cgnetns-helper"
#endif
#define CGNETNS_TAG_XATTR "trusted.cgnetns"
#define SELF_NAME "cgnetns-exec"     /* the name users type, and the message prefix */
#define HELPER_NAME "cgnetns-helper" /* the set-user-ID helper's own name */

#define TAG_MAX    255  /* longest tag value, FORMAT.rst */
#define PIN_ID_MAX 100  /* longest pin ID, FORMAT.rst */
#define CG_PATH_MAX 4096
#define ALLOW_MAX  (64 * 1024) /* largest allow list accepted */
#define PROC_CGROUP_MAX (64 * 1024) /* largest /proc/PID/cgroup accepted */

/* ---- util.c ---- */
__attribute__((noreturn, format(printf, 2, 3)))
void die(int status, const char *fmt, ...);
__attribute__((noreturn, format(printf, 2, 3)))
void die_with_error(int status, const char *fmt, ...);
__attribute__((format(printf, 1, 2)))
void note(const char *fmt, ...);
const char *errno_name(int e);
ssize_t read_full(int fd, char *buf, size_t size);
void close_quietly(int fd);
int fd_on_fs(int fd, unsigned long magic);
/* From now on die() answers the broker's client on fd ("refuse STATUS
 * MESSAGE\n") and logs the message, after "cgnetnsd: CONTEXT: ", on fd 2
 * (supervise.c).  fd -1: back to plain messages on fd 2. */
void set_reply_fd(int fd, const char *context);
/* One line on fd 2, every byte outside printable ASCII written as \xNN,
 * so that no caller-chosen string can forge or split a log line. */
__attribute__((format(printf, 1, 2)))
void log_line(const char *fmt, ...);
/* PROGRAM and its argv from the helper's argv: the basename of argv[0]
 * when called through a masquerade symlink, else the first argument. */
void program_from_argv(int argc, char **argv, const char **program, char ***prog_argv);
int is_self_name(const char *argv0);

/* ---- parse.c (pure: no I/O, no exit; fuzzed) ---- */
struct tag {
	char id[PIN_ID_MAX + 1];
	uint64_t dev;
	uint64_t ino;
	uint64_t nsid;
};
enum parse_result {
	PARSE_OK = 0,
	PARSE_NONE = 1,        /* cgroup file: no 0:: line */
	PARSE_BAD = 2,         /* malformed */
	PARSE_VERSION = 3,     /* tag: a version other than v1 */
};
/* buf/len: contents of /proc/PID/cgroup.  On PARSE_OK, *path and *plen are the
 * 0:: path without its leading '/' (empty for the root), inside buf. */
enum parse_result parse_cgroup_file(const char *buf, size_t len,
				    const char **path, size_t *plen);
enum parse_result parse_tag(const char *buf, size_t len, struct tag *t);
int parse_pin_id(const char *s, size_t n);
int path_is_canonical(const char *p, size_t n);
/* Look PROGRAM up in the allow list text.  Every line is checked first: a
 * bad line makes the whole list bad (PARSE_BAD, *bad_line set, 1-based).
 * PARSE_OK: *entry and *elen are the first matching entry (inside buf).
 * PARSE_NONE: no entry matches. */
enum parse_result parse_allow_next(const char *buf, size_t len, size_t *pos,
				   unsigned *lineno, const char **entry, size_t *elen);
enum parse_result parse_allow(const char *buf, size_t len, const char *program,
			      const char **entry, size_t *elen,
			      unsigned *bad_line);
const char *base_name(const char *p);

/* ---- path.c ---- */
enum trust_kind { TRUST_DIR, TRUST_FILE };
struct trust_error {
	int err;          /* errno of a failed call, or 0 */
	int unsafe;       /* 1: a component failed the ownership/mode/type check */
	char where[CG_PATH_MAX]; /* the component that failed */
	const char *why;
};
/* check_owner 0: skip the uid 0 check (in a user namespace, where root's
 * files show as the overflow uid and ownership cannot be observed). */
int open_trusted(const char *abspath, enum trust_kind kind, int flags,
		 int check_owner, struct trust_error *e);

/* ---- allow.c ---- */
struct program {
	int fd;                  /* O_PATH fd of the checked file */
	char path[CG_PATH_MAX];  /* its canonical path (the allow-list entry) */
};
void allow_check_program(const char *program, int privileged, int check_owner,
			 struct program *out);
#define EXE_SET_MAX 256
struct exe_set {
	int n;
	struct {
		int fd;
		dev_t dev;
		ino_t ino;
	} e[EXE_SET_MAX];
};
void allow_exe_set(struct exe_set *set);

/* ---- the subject: the process the decision is made for ---- */
struct subject {
	int proc_fd; /* /proc/<pid> (or /proc/self), checked to be procfs */
	pid_t pid;   /* its pid as seen in this process's pid namespace */
	int *cg_out; /* not NULL: cgroup_find_tag() stores an fd of the
			subject's (checked) cgroup directory here */
};
void subject_self(struct subject *s);

/* ---- cgroup.c ---- */
int cgroup2_open_root(void);
/* Opens the subject's cgroup2 directory (checked membership) and walks up
 * to the nearest tag.  Returns 1 and fills *t when a tag is found, 0 when
 * none is (pass-through); refuses (exits) on every failed check.  After a
 * 1, cgroup_tagged_path() is the tagged cgroup's path below the cgroup2
 * root (no leading '/'; empty for the root), and its length. */
int cgroup_find_tag(const struct subject *s, struct tag *t);
const char *cgroup_tagged_path(size_t *len);

/* ---- pin.c ---- */
struct ns_ident {
	uint64_t dev;
	uint64_t ino;
};
int pin_open_verified(const struct tag *t);
void netns_of_fd(int fd, const char *what, struct ns_ident *id);

/* ---- resolve.c ---- */
enum verdict_kind { VERDICT_NONE, VERDICT_ALREADY, VERDICT_JOIN };
struct verdict {
	enum verdict_kind kind;
	int pin_fd;        /* VERDICT_JOIN: the verified pin, else -1 */
	struct tag tag;
};
void resolve(const struct subject *s, struct verdict *v);

/* ---- drop.c ---- */
struct caller {
	uid_t ruid, euid, suid;
	gid_t rgid, egid, sgid;
	int ngroups;
	gid_t *groups;
	int groups_preset; /* 1: groups were set already, only verify them */
};
void caller_get(struct caller *c);
int in_initial_userns(void);
int have_privilege(uid_t euid);
void drop_privileges(const struct caller *c);
void drop_capabilities(void);

/* ---- env.c ---- */
void env_prepare(void);
char **env_for_program(void);

/* ---- exec.c ---- */
__attribute__((noreturn))
void exec_program(const struct program *p, char **argv, char **envp);

/* ---- client.c ---- */
/* Without privilege: ask the broker, and run the program as it answers;
 * when no broker answers, run it unchanged (allow list still applied). */
__attribute__((noreturn))
void run_unprivileged(const char *program, char **prog_argv, char **envp);

/* ---- notify.c ---- */
struct supervision {
	struct exe_set allowed; /* allow-listed executables */
	const char *build;      /* tagged cgroup path, no leading '/' */
	size_t build_len;
};
int notify_install_filter(void);
void notify_send_listener(int sock, int listener);
int notify_receive_listener(int sock, const char *what);
void notify_enter(int pin_fd, const char *pin_id, const struct caller *c);
int notify_is_listener(int fd);
int notify_can_send_fds(int listener);
__attribute__((noreturn))
void notify_serve(int listener, int proc_fd, const struct supervision *sv);

/* ---- supervise.c ---- */
__attribute__((noreturn))
void supervise_main(int argc, char **argv);
int supervise_mode_check(int argc, char **argv, const char *mode);
__attribute__((noreturn))
void supervise_connection(int use_pidfd);

/* ---- spawner.c ---- */
__attribute__((noreturn))
void spawner_main(int argc, char **argv);

#endif
