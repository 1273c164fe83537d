/* protocol.h: the broker protocol's constants (doc/BROKER.rst), the one
 * source for C; cgnetns/broker.py reads the same values and
 * tests/test_protocol.py checks that the two agree.
 *
 * Request (client -> broker), one message:
 *   "CGN2", uint32 flags (0), uint32 n, then n bytes: the program's name
 *   (native byte order, no NUL; 1 <= n < BROKER_NAME_MAX).
 * Answers (broker -> client), lines:
 *   "pass PATH", "join PATH", "refuse STATUS TEXT", and after "join" and the
 *   client's listener (one byte with SCM_RIGHTS): "ok" or "refuse ...". */
#ifndef CGNETNS_PROTOCOL_H
#define CGNETNS_PROTOCOL_H

#define CGNETNS_BROKER_MAGIC "CGN2"
#define BROKER_HEADER_SIZE 12
#define BROKER_NAME_MAX 4096
/* Seconds a connection may take from accept to "ok" (or a refusal): each
 * phase of the broker's side of a request runs under this deadline. */
#define BROKER_HANDSHAKE_SECONDS 5

#endif
