/* parsecheck.c: command-line driver for the pure parsers (not installed),
 * built with ASan+UBSan by tests/test_helper_sanitized.py.
 *
 *   parsecheck cgroup FILE          OK <path> | NONE | BAD
 *   parsecheck tag FILE             OK <id> <dev> <ino> <nsid> | BAD | VERSION
 *   parsecheck allow PROGRAM FILE   OK <entry> | NONE | BAD <line>
 *   parsecheck canonical FILE       1 | 0
 * FILE is read whole; the parsers get an exact-size heap copy. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helper.h"

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	size_t cap = 1 << 20;
	char *tmp = malloc(cap);
	*len = fread(tmp, 1, cap, f);
	fclose(f);
	char *buf = malloc(*len ? *len : 1);
	memcpy(buf, tmp, *len);
	free(tmp);
	return buf;
}

static const char *name(enum parse_result r)
{
	switch (r) {
	case PARSE_OK:
		return "OK";
	case PARSE_NONE:
		return "NONE";
	case PARSE_VERSION:
		return "VERSION";
	default:
		return "BAD";
	}
}

int main(int argc, char **argv)
{
	size_t len;
	if (argc == 3 && strcmp(argv[1], "cgroup") == 0) {
		char *buf = slurp(argv[2], &len);
		const char *p;
		size_t n;
		enum parse_result r = parse_cgroup_file(buf, len, &p, &n);
		if (r == PARSE_OK)
			printf("OK /%.*s\n", (int)n, p);
		else
			printf("%s\n", name(r));
	} else if (argc == 3 && strcmp(argv[1], "tag") == 0) {
		char *buf = slurp(argv[2], &len);
		struct tag t;
		enum parse_result r = parse_tag(buf, len, &t);
		if (r == PARSE_OK)
			printf("OK %s %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", t.id, t.dev, t.ino, t.nsid);
		else
			printf("%s\n", name(r));
	} else if (argc == 4 && strcmp(argv[1], "allow") == 0) {
		char *buf = slurp(argv[3], &len);
		const char *e;
		size_t n;
		unsigned bad;
		enum parse_result r = parse_allow(buf, len, argv[2], &e, &n, &bad);
		if (r == PARSE_OK)
			printf("OK %.*s\n", (int)n, e);
		else if (r == PARSE_BAD)
			printf("BAD %u\n", bad);
		else
			printf("%s\n", name(r));
	} else if (argc == 3 && strcmp(argv[1], "canonical") == 0) {
		char *buf = slurp(argv[2], &len);
		printf("%d\n", path_is_canonical(buf, len));
	} else {
		fprintf(stderr, "usage: parsecheck cgroup|tag|allow|canonical ...\n");
		return 2;
	}
	return 0;
}
