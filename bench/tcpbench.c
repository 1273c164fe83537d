/* tcpbench: the data-path benchmark's server and client (TCP over loopback).
 *
 *   tcpbench serve
 *       Listen on 127.0.0.1, an ephemeral port; print the port on stdout; serve
 *       connections one after another until killed.  Per connection, one
 *       command byte:
 *         'p'  answer 'p' (the echo that ends a connect-latency sample)
 *         's'  read an 8-byte big-endian length L, then L bytes, answer 'k'
 *
 *   tcpbench client [-S SOCKS_UNIX_PATH] PORT LAT_N BYTES REPS
 *       LAT_N times: connect to 127.0.0.1:PORT, send 'p', wait for the echo;
 *       print "lat <ns>" measured from before socket(2) to the echo.  Then REPS
 *       times: connect, send 's' and BYTES, wait for 'k'; print "xfer <ns>
 *       <bytes>" measured from the first data byte to the answer.
 *       With -S the connection goes through a SOCKSv5 server (no
 *       authentication, CONNECT to 127.0.0.1:PORT) listening on that Unix
 *       socket, as a sandboxed build reaches Portage's relay; the SOCKS
 *       handshake is inside the latency figure.
 *
 * Part of cgnetns' benchmarks (bench/); compiled at bench time with gcc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "tcpbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Read exactly n bytes; 0 on success, -1 on EOF or error. */
static int read_all(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static void serve_one(int c, char *buf)
{
	char cmd;
	if (read_all(c, &cmd, 1) < 0)
		return;
	if (cmd == 'p') {
		write_all(c, "p", 1);
	} else if (cmd == 's') {
		unsigned char lb[8];
		if (read_all(c, lb, 8) < 0)
			return;
		uint64_t left = 0;
		for (int i = 0; i < 8; i++)
			left = (left << 8) | lb[i];
		while (left > 0) {
			ssize_t r = read(c, buf, left < CHUNK ? left : CHUNK);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return;
			left -= (uint64_t)r;
		}
		write_all(c, "k", 1);
	}
}

__attribute__((noreturn)) static void serve(void)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket");
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
		die("bind");
	if (listen(s, 64) < 0)
		die("listen");
	socklen_t al = sizeof a;
	getsockname(s, (struct sockaddr *)&a, &al);
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	signal(SIGPIPE, SIG_IGN);
	char *buf = malloc(CHUNK);
	if (!buf)
		die("malloc");
	for (;;) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			die("accept");
		}
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		serve_one(c, buf);
		close(c);
	}
}

/* A connected stream to 127.0.0.1:port, directly or through SOCKSv5. */
static int open_stream(const char *socks, int port)
{
	int one = 1;
	if (!socks) {
		int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0)
			die("socket");
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (connect(s, (struct sockaddr *)&a, sizeof a) < 0)
			die("connect");
		setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		return s;
	}
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket");
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	if (strlen(socks) >= sizeof u.sun_path) {
		errno = ENAMETOOLONG;
		die(socks);
	}
	strcpy(u.sun_path, socks);
	if (connect(s, (struct sockaddr *)&u, sizeof u) < 0)
		die("connect to the SOCKS server");
	unsigned char hello[3] = { 5, 1, 0 }, rep[10];
	write_all(s, hello, 3);
	if (read_all(s, rep, 2) < 0 || rep[0] != 5 || rep[1] != 0) {
		fprintf(stderr, "tcpbench: SOCKS server refused the no-auth method\n");
		exit(1);
	}
	unsigned char req[10] = { 5, 1, 0, 1, 127, 0, 0, 1,
				  (unsigned char)(port >> 8), (unsigned char)port };
	write_all(s, req, 10);
	if (read_all(s, rep, 10) < 0 || rep[0] != 5 || rep[1] != 0 || rep[3] != 1) {
		fprintf(stderr, "tcpbench: SOCKS CONNECT failed (reply %d)\n", rep[1]);
		exit(1);
	}
	return s;
}

static int client(int argc, char **argv)
{
	const char *socks = NULL;
	int i = 2;
	if (i + 1 < argc && strcmp(argv[i], "-S") == 0) {
		socks = argv[i + 1];
		i += 2;
	}
	if (argc - i != 4) {
		fprintf(stderr, "usage: tcpbench client [-S SOCKS_UNIX_PATH] PORT LAT_N BYTES REPS\n");
		return 2;
	}
	int port = atoi(argv[i]);
	long lat_n = atol(argv[i + 1]);
	unsigned long long bytes = strtoull(argv[i + 2], NULL, 10);
	long reps = atol(argv[i + 3]);
	signal(SIGPIPE, SIG_IGN);

	for (long k = 0; k < lat_n; k++) {
		char c;
		long long t0 = now_ns();
		int s = open_stream(socks, port);
		write_all(s, "p", 1);
		if (read_all(s, &c, 1) < 0 || c != 'p') {
			fprintf(stderr, "tcpbench: no echo\n");
			return 1;
		}
		long long t1 = now_ns();
		close(s);
		printf("lat %lld\n", t1 - t0);
	}
	char *buf = malloc(CHUNK);
	if (!buf)
		die("malloc");
	memset(buf, 0x5a, CHUNK);
	for (long k = 0; k < reps; k++) {
		int s = open_stream(socks, port);
		unsigned char hdr[9] = { 's' };
		for (int b = 0; b < 8; b++)
			hdr[1 + b] = (unsigned char)(bytes >> (56 - 8 * b));
		write_all(s, hdr, 9);
		long long t0 = now_ns();
		for (unsigned long long left = bytes; left > 0;) {
			size_t n = left < CHUNK ? (size_t)left : CHUNK;
			write_all(s, buf, n);
			left -= n;
		}
		char c;
		if (read_all(s, &c, 1) < 0 || c != 'k') {
			fprintf(stderr, "tcpbench: transfer not acknowledged\n");
			return 1;
		}
		long long t1 = now_ns();
		close(s);
		printf("xfer %lld %llu\n", t1 - t0, bytes);
	}
	return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "serve") == 0)
		serve();
	if (argc >= 2 && strcmp(argv[1], "client") == 0)
		return client(argc, argv);
	fprintf(stderr, "usage: tcpbench serve | tcpbench client [-S PATH] PORT LAT_N BYTES REPS\n");
	return 2;
}
