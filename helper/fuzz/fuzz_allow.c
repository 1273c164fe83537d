/* libFuzzer harness for parse_allow() and path_is_canonical().
 * Input: PROGRAM, a NUL byte, then the allow-list text (no NUL: PROGRAM is
 * "distcc" and the whole input is the list).  The result is compared with a
 * deliberately naive reference implementation. */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helper.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int ref_canonical(const char *p, size_t n)
{
	if (n < 2 || n >= CG_PATH_MAX || p[0] != '/' || p[n - 1] == '/')
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] <= ' ' || (unsigned char)p[i] == 0x7f)
			return 0;
	/* split on '/' with a copy and strtok-free scanning */
	char *c = malloc(n + 2);
	memcpy(c, p, n);
	c[n] = '/';
	c[n + 1] = '\0';
	int ok = 1;
	char *s = c + 1;
	for (char *e; ok && (e = strchr(s, '/')); s = e + 1) {
		*e = '\0';
		if (!*s || !strcmp(s, ".") || !strcmp(s, "..") || strlen(s) > 255)
			ok = 0;
	}
	free(c);
	return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *z = memchr(data, 0, size);
	char program[512] = "distcc";
	const uint8_t *list = data;
	size_t llen = size;
	if (z) {
		size_t plen = (size_t)(z - data);
		if (plen >= sizeof program)
			return 0;
		memcpy(program, data, plen);
		program[plen] = '\0';
		list = z + 1;
		llen = size - plen - 1;
	}
	char *buf = malloc(llen ? llen : 1);
	memcpy(buf, list, llen);

	const char *entry = NULL;
	size_t elen = 0;
	unsigned bad = 0;
	enum parse_result r = parse_allow(buf, llen, program, &entry, &elen, &bad);

	/* reference */
	enum parse_result want = PARSE_NONE;
	const char *want_e = NULL;
	unsigned want_bad = 0, lineno = 0;
	size_t pos = 0, plen = strlen(program);
	if (memchr(buf, '\0', llen))
		want = PARSE_BAD;
	while (want != PARSE_BAD && pos < llen) {
		size_t end = pos;
		while (end < llen && buf[end] != '\n')
			end++;
		lineno++;
		size_t a = pos, b = end;
		pos = end + 1;
		while (a < b && (buf[a] == ' ' || buf[a] == '\t'))
			a++;
		while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t'))
			b--;
		if (a == b || buf[a] == '#')
			continue;
		if (!ref_canonical(buf + a, b - a)) {
			want = PARSE_BAD;
			want_bad = lineno;
			break;
		}
		if (want_e)
			continue;
		const char *base = buf + a;
		for (size_t i = a; i < b; i++)
			if (buf[i] == '/')
				base = buf + i + 1;
		if (program[0] == '/' ? (b - a == plen && !memcmp(buf + a, program, plen))
				      : (plen && (size_t)(buf + b - base) == plen &&
					 !memcmp(base, program, plen))) {
			want_e = buf + a;
			want = PARSE_OK;
		}
	}
	assert(r == want);
	if (r == PARSE_BAD && !memchr(buf, '\0', llen))
		assert(bad == want_bad);
	if (r == PARSE_OK) {
		assert(entry == want_e);
		assert(path_is_canonical(entry, elen));
		assert(entry >= buf && entry + elen <= buf + llen);
	}
	/* path_is_canonical() against the reference on the raw list */
	assert(!!path_is_canonical(buf, llen) == !!ref_canonical(buf, llen) ||
	       memchr(buf, '\0', llen));
	free(buf);
	return 0;
}
