/* libFuzzer harness for parse_tag() and parse_pin_id() (the tag value). */
#include <assert.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helper.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1);
	memcpy(buf, data, size);
	struct tag t;
	memset(&t, 0xa5, sizeof t);
	enum parse_result r = parse_tag(buf, size, &t);
	assert(r == PARSE_OK || r == PARSE_BAD || r == PARSE_VERSION);
	if (r == PARSE_OK) {
		/* Round trip: the format is canonical, so printing what was parsed
		 * gives back the input byte for byte. */
		char again[TAG_MAX + 64];
		size_t idlen = strnlen(t.id, sizeof t.id);
		assert(idlen < sizeof t.id);
		assert(parse_pin_id(t.id, idlen));
		int n = snprintf(again, sizeof again, "v1 pin=%s dev=%" PRIu64 " ino=%" PRIu64
				 " nsid=%" PRIu64, t.id, t.dev, t.ino, t.nsid);
		assert(n > 0 && (size_t)n == size && memcmp(again, buf, size) == 0);
		assert(size <= TAG_MAX);
	}
	if (r == PARSE_VERSION)
		assert(size >= 2 && buf[0] == 'v' && !(size >= 3 && memcmp(buf, "v1 ", 3) == 0));
	/* The ID grammar on its own. */
	if (parse_pin_id(buf, size)) {
		assert(size >= 1 && size <= PIN_ID_MAX);
		assert(size < 5 || (memcmp(buf + size - 5, ".json", 5) != 0 &&
				    memcmp(buf + size - 5, ".lock", 5) != 0));
		for (size_t i = 0; i < size; i++)
			assert(buf[i] != '/' && buf[i] != '\0' && buf[i] != ' ');
		assert(!(size == 1 && buf[0] == '.'));
	}
	free(buf);
	return 0;
}
