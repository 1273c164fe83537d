/* exec.c: run the checked program.
 *
 * execveat(fd, "", AT_EMPTY_PATH) runs exactly the file that allow.c
 * opened and checked, whatever happens to its path in between.
 *
 * A "#!" script cannot run that way: the fd is O_CLOEXEC (so that no fd
 * of the helper reaches the program), the kernel would hand the interpreter
 * /dev/fd/N, which is closed by then, and the exec fails with ENOENT.  For
 * that case only, the script is run by its canonical path with execve().
 * That is safe because open_trusted() has established that every directory
 * on the path and the file itself are root-owned and not writable by group
 * or others, with no symlink anywhere: only root can change what the path
 * names, and root is trusted anyway.  The path is resolved in the same
 * mount namespace and root directory that were checked (the helper changes
 * neither).  Dropping O_CLOEXEC instead would leak the fd into the script. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "compat.h"
#include "helper.h"

void exec_program(const struct program *p, char **argv, char **envp)
{
	syscall(SYS_execveat, p->fd, "", argv, envp, AT_EMPTY_PATH);
	if (errno == ENOENT) {
		execve(p->path, argv, envp);
	}
	int err = errno;
	if (err == ENOENT)
		die(EXIT_NOT_FOUND, "%s: not found (or its interpreter is missing)", p->path);
	errno = err;
	die_with_error(EXIT_NOT_USABLE, "cannot execute %s", p->path);
}
