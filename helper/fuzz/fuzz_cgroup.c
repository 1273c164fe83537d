/* libFuzzer harness for parse_cgroup_file() (the /proc/PID/cgroup reader). */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helper.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size heap copy: ASan sees any read past the end. */
	char *buf = malloc(size ? size : 1);
	memcpy(buf, data, size);
	const char *path = NULL;
	size_t plen = 0;
	enum parse_result r = parse_cgroup_file(buf, size, &path, &plen);
	assert(r == PARSE_OK || r == PARSE_NONE || r == PARSE_BAD);
	if (r == PARSE_OK) {
		/* The path lies inside the buffer, right after "0::/", and the line
		 * ends right after it. */
		assert(path >= buf + 4 && path + plen < buf + size);
		assert(memcmp(path - 4, "0::/", 4) == 0);
		assert(path[plen] == '\n');
		assert(path - 4 == buf || path[-5] == '\n');
		assert(plen < CG_PATH_MAX);
		/* Components: non-empty, not "." or "..", no NUL or newline. */
		size_t start = 0;
		for (size_t i = 0; i <= plen; i++) {
			if (i < plen) {
				assert(path[i] != '\0' && path[i] != '\n');
			}
			if (i == plen || path[i] == '/') {
				size_t len = i - start;
				if (plen > 0) {
					assert(len > 0);
					assert(!(len == 1 && path[start] == '.'));
					assert(!(len == 2 && path[start] == '.' && path[start + 1] == '.'));
				}
				start = i + 1;
			}
		}
		/* Exactly one 0:: line. */
		int lines = 0;
		for (size_t i = 0; i + 3 <= size; i++)
			if ((i == 0 || buf[i - 1] == '\n') && memcmp(buf + i, "0::", 3) == 0)
				lines++;
		assert(lines == 1);
	}
	free(buf);
	return 0;
}
