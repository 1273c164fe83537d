/* filler: put N idle processes on the host (the scale benchmark's load).
 *
 *   filler N
 *
 * Forks N children that sleep in pause(2); prints each child's PID on stdout,
 * one a line, then "ready", and waits; children that die are reaped at
 * once (SIGCHLD ignored).  The children die with the filler
 * (PR_SET_PDEATHSIG) and when killed by PID; the benchmark kills every one of
 * them by PID and the filler itself, also on Ctrl-C.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 0;
	pid_t self = getpid();
	/* Dead children are reaped by the kernel: none lingers as a zombie. */
	signal(SIGCHLD, SIG_IGN);
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("filler: fork");
			return 1;
		}
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != self)
				_exit(0);
			for (;;)
				pause();
		}
		printf("%d\n", (int)pid);
	}
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}
