/* parse.c: the pure parsers.  No I/O, no allocation, no exit: each takes a
 * buffer and its length (not NUL-terminated) and says yes or no.  They are
 * strict on purpose: whatever does not match the format exactly is refused.
 * Each has a libFuzzer harness under fuzz/. */
#include <string.h>

#include "helper.h"

static int is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9');
}

static int has_suffix(const char *s, size_t n, const char *suf)
{
	size_t k = strlen(suf);
	return n >= k && memcmp(s + n - k, suf, k) == 0;
}

const char *base_name(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

/* The components of P[1..n): none empty, "." or "..", none longer than 255
 * bytes; no NUL, and with REJECT_CTL no blank or control character. */
static int components_ok(const char *p, size_t n, int reject_ctl)
{
	size_t start = 1;
	for (size_t i = 1; i <= n; i++) {
		if (i < n) {
			unsigned char c = (unsigned char)p[i];
			if (c == '\0' || (reject_ctl && (c <= 0x20 || c == 0x7f)))
				return 0;
		}
		if (i == n || p[i] == '/') {
			size_t len = i - start;
			if (len == 0 || len > 255)
				return 0;
			if (len == 1 && p[start] == '.')
				return 0;
			if (len == 2 && p[start] == '.' && p[start + 1] == '.')
				return 0;
			start = i + 1;
		}
	}
	return 1;
}

/* A cgroup path as found after "0::" (including the leading '/'): "/"
 * alone (the root) or canonical components.  A cgroup name may hold blanks,
 * so only NUL is refused; names cannot contain '\n'. */
static int cgroup_path_ok(const char *p, size_t n)
{
	if (n == 0 || p[0] != '/' || n >= CG_PATH_MAX)
		return 0;
	return n == 1 || components_ok(p, n, 0);
}

enum parse_result parse_cgroup_file(const char *buf, size_t len,
				    const char **path, size_t *plen)
{
	int found = 0;
	size_t pos = 0;
	while (pos < len) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		if (!nl)
			return PARSE_BAD; /* every line ends with '\n' */
		size_t end = (size_t)(nl - buf);
		const char *line = buf + pos;
		size_t llen = end - pos;
		if (memchr(line, '\0', llen))
			return PARSE_BAD;
		if (llen >= 3 && memcmp(line, "0::", 3) == 0) {
			if (found)
				return PARSE_BAD; /* two 0:: lines: confusion */
			if (!cgroup_path_ok(line + 3, llen - 3))
				return PARSE_BAD;
			*path = line + 4;
			*plen = llen - 4;
			found = 1;
		}
		pos = end + 1;
	}
	return found ? PARSE_OK : PARSE_NONE;
}

/* [A-Za-z0-9][A-Za-z0-9_.-]{0,99}, not ending in .json or .lock */
int parse_pin_id(const char *s, size_t n)
{
	if (n == 0 || n > PIN_ID_MAX || !is_alnum((unsigned char)s[0]))
		return 0;
	for (size_t i = 1; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!is_alnum(c) && c != '_' && c != '.' && c != '-')
			return 0;
	}
	if (has_suffix(s, n, ".json") || has_suffix(s, n, ".lock"))
		return 0;
	return 1;
}

/* <U64>: decimal, no sign, no leading zero except "0", at most 20 digits,
 * fits in 64 bits.  Consumes digits from *pos. */
static int parse_u64(const char *s, size_t n, size_t *pos, uint64_t *out)
{
	size_t i = *pos, start = i;
	uint64_t v = 0;
	while (i < n && s[i] >= '0' && s[i] <= '9') {
		unsigned d = (unsigned)(s[i] - '0');
		if (i - start >= 20 || v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
		i++;
	}
	if (i == start || (s[start] == '0' && i - start > 1))
		return 0;
	*pos = i;
	*out = v;
	return 1;
}

static int expect(const char *s, size_t n, size_t *pos, const char *lit)
{
	size_t k = strlen(lit);
	if (n - *pos < k || memcmp(s + *pos, lit, k) != 0)
		return 0;
	*pos += k;
	return 1;
}

/* "v1 pin=<ID> dev=<U64> ino=<U64> nsid=<U64>", exactly. */
enum parse_result parse_tag(const char *s, size_t n, struct tag *t)
{
	size_t pos = 0;
	if (n > TAG_MAX || memchr(s, '\0', n))
		return PARSE_BAD;
	if (!expect(s, n, &pos, "v1 ")) {
		/* "v<digits>" followed by a space or the end: another version */
		size_t i = 1;
		if (n >= 2 && s[0] == 'v') {
			while (i < n && s[i] >= '0' && s[i] <= '9')
				i++;
			if (i > 1 && (i == n || s[i] == ' '))
				return PARSE_VERSION;
		}
		return PARSE_BAD;
	}
	if (!expect(s, n, &pos, "pin="))
		return PARSE_BAD;
	size_t id_start = pos;
	while (pos < n && s[pos] != ' ')
		pos++;
	if (!parse_pin_id(s + id_start, pos - id_start))
		return PARSE_BAD;
	memcpy(t->id, s + id_start, pos - id_start);
	t->id[pos - id_start] = '\0';
	if (!expect(s, n, &pos, " dev=") || !parse_u64(s, n, &pos, &t->dev) ||
	    !expect(s, n, &pos, " ino=") || !parse_u64(s, n, &pos, &t->ino) ||
	    !expect(s, n, &pos, " nsid=") || !parse_u64(s, n, &pos, &t->nsid))
		return PARSE_BAD;
	return pos == n ? PARSE_OK : PARSE_BAD;
}

/* An allow-list entry: absolute, canonical (no "//", ".", "..", trailing
 * '/'), not the root, printable ASCII or UTF-8 without blanks or control
 * characters, components of at most 255 bytes. */
int path_is_canonical(const char *p, size_t n)
{
	if (n < 2 || n >= CG_PATH_MAX || p[0] != '/')
		return 0;
	return components_ok(p, n, 1);
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* The allow list, one entry at a time from *pos: PARSE_OK with the entry
 * (inside buf), PARSE_NONE at the end, PARSE_BAD (*bad_line set, 1-based)
 * for a line that is not a canonical absolute path.  *lineno counts lines
 * (start at 0).  Callers that use an entry check the whole list first
 * (allow_list_valid): one bad line makes the whole list bad. */
enum parse_result parse_allow_next(const char *buf, size_t len, size_t *pos,
				   unsigned *lineno, const char **entry, size_t *elen)
{
	while (*pos < len) {
		const char *nl = memchr(buf + *pos, '\n', len - *pos);
		size_t end = nl ? (size_t)(nl - buf) : len;
		size_t a = *pos, b = end;
		(*lineno)++;
		*pos = end + 1;
		while (a < b && is_blank(buf[a]))
			a++;
		while (b > a && is_blank(buf[b - 1]))
			b--;
		if (a == b || buf[a] == '#')
			continue;
		if (!path_is_canonical(buf + a, b - a))
			return PARSE_BAD;
		*entry = buf + a;
		*elen = b - a;
		return PARSE_OK;
	}
	return PARSE_NONE;
}

/* PARSE_OK when every line is good; else PARSE_BAD with *bad_line. */
static enum parse_result allow_list_valid(const char *buf, size_t len, unsigned *bad_line)
{
	const char *z = memchr(buf, '\0', len);
	size_t pos = 0;
	unsigned lineno = 0;
	const char *e;
	size_t n;
	enum parse_result r;

	*bad_line = 0;
	if (z) {
		unsigned l = 1;
		for (const char *c = buf; c < z; c++)
			l += *c == '\n';
		*bad_line = l;
		return PARSE_BAD;
	}
	while ((r = parse_allow_next(buf, len, &pos, &lineno, &e, &n)) == PARSE_OK)
		;
	if (r == PARSE_BAD) {
		*bad_line = lineno;
		return PARSE_BAD;
	}
	return PARSE_OK;
}

enum parse_result parse_allow(const char *buf, size_t len, const char *program,
			      const char **entry, size_t *elen,
			      unsigned *bad_line)
{
	size_t plen = strlen(program);
	int absolute = plen > 0 && program[0] == '/';
	size_t pos = 0;
	unsigned lineno = 0;
	const char *e;
	size_t n;

	if (allow_list_valid(buf, len, bad_line) != PARSE_OK)
		return PARSE_BAD;
	while (parse_allow_next(buf, len, &pos, &lineno, &e, &n) == PARSE_OK) {
		if (absolute) {
			if (n == plen && memcmp(e, program, n) == 0)
				goto found;
		} else if (plen > 0) {
			const char *slash = e + n;
			while (slash > e && slash[-1] != '/')
				slash--;
			size_t blen = (size_t)(e + n - slash);
			if (blen == plen && memcmp(slash, program, plen) == 0)
				goto found;
		}
	}
	return PARSE_NONE;
found:
	*entry = e;
	*elen = n;
	return PARSE_OK;
}
