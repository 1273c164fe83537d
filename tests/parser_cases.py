"""One table of parser cases for the cgroup file, the tag and the allow list,
run against the helper's C parsers (helper/parse.c, through
helper/testsupport/parsecheck.c) and the Python ones (cgnetns.cgroups,
cgnetns.tags, cgnetns.allowlist) alike: tests/test_parsers.py (no root) and
tests/test_helper_sanitized.py (ASan+UBSan).  Each expected answer is
parsecheck's output."""

CGROUP_CASES = [
    (b"0::/\n", "OK /"),
    (b"0::/cgnetns/build-1\n", "OK /cgnetns/build-1"),
    (b"9:name=systemd:/x\n1:cpu:/\n0::/a/b c\n", "OK /a/b c"),
    (b"0::/a\n0::/b\n", "BAD"),                 # two 0:: lines
    (b"1:cpu:/\n", "NONE"),                     # v1-only host
    (b"", "NONE"),
    (b"0::/a", "BAD"),                          # no newline
    (b"0::a\n", "BAD"),                         # not absolute
    (b"0::/a//b\n", "BAD"),
    (b"0::/a/\n", "BAD"),
    (b"0::/../x\n", "BAD"),                     # outside the cgroup namespace
    (b"0::/a/./b\n", "BAD"),
    (b"0::/a\x00b\n", "BAD"),
    (b"0::/" + b"x" * 256 + b"\n", "BAD"),     # component too long
    (b"10::/a\n", "NONE"),                      # not hierarchy 0
    (b"1:name=x:/y\n0::/ok\n", "OK /ok"),
]


TAG_CASES = [
    (b"v1 pin=b-0123456789abcdef dev=4 ino=4026531833 nsid=3",
     "OK b-0123456789abcdef 4 4026531833 3"),
    (b"v1 pin=a dev=0 ino=18446744073709551615 nsid=0", "OK a 0 18446744073709551615 0"),
    (b"v1 pin=a dev=0 ino=18446744073709551616 nsid=0", "BAD"),
    (b"v1 pin=a dev=00 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a dev=01 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a dev=+1 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a dev=1 ino=1 nsid=0\n", "BAD"),
    (b"v1 pin=a dev=1 ino=1 nsid=0 ", "BAD"),
    (b"v1 pin=a dev=1 ino=1", "BAD"),
    (b"v1 pin=a ino=1 dev=1 nsid=0", "BAD"),
    (b"v1 pin=.a dev=1 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a/b dev=1 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a.json dev=1 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a.lock dev=1 ino=1 nsid=0", "BAD"),
    (b"v1 pin=a.jsonx dev=1 ino=1 nsid=0", "OK a.jsonx 1 1 0"),
    (b"v1 pin=" + b"a" * 100 + b" dev=1 ino=1 nsid=0", "OK " + "a" * 100 + " 1 1 0"),
    (b"v1 pin=" + b"a" * 101 + b" dev=1 ino=1 nsid=0", "BAD"),
    (b"v1 pin= dev=1 ino=1 nsid=0", "BAD"),
    (b"v2 pin=a dev=1 ino=1 nsid=0", "VERSION"),
    (b"v2", "VERSION"),
    (b"v1", "VERSION"),                          # "v1" without its fields
    (b"v2 pin=\xff", "VERSION"),                 # the version decides first
    (b"v2 pin=a\x00", "BAD"),                    # a NUL first of all
    (b"v12 x", "VERSION"),
    (b"v1x pin=a dev=1 ino=1 nsid=0", "BAD"),
    (b"v", "BAD"),
    (b"V1 pin=a dev=1 ino=1 nsid=0", "BAD"),
    (b"", "BAD"),
    (b"v1 pin=a dev=1 ino=1 nsid=0\x00", "BAD"),
    (b"v1 pin=a dev=1 ino=1 nsid=" + b"1" * 21, "BAD"),
]


ALLOW_TEXT = b"# comment\n\n/usr/bin/distcc\n  /usr/lib/icecc/bin/icecc\t\n/opt/x/distcc\n"
ALLOW_CASES = [
    ("distcc", ALLOW_TEXT, "OK /usr/bin/distcc"),          # first match by basename
    ("/opt/x/distcc", ALLOW_TEXT, "OK /opt/x/distcc"),     # exact path
    ("icecc", ALLOW_TEXT, "OK /usr/lib/icecc/bin/icecc"),  # blanks around are trimmed
    ("/usr/bin/icecc", ALLOW_TEXT, "NONE"),
    ("/usr/bin/../bin/distcc", ALLOW_TEXT, "NONE"),
    ("dist", ALLOW_TEXT, "NONE"),
    ("", ALLOW_TEXT, "NONE"),
    ("distcc", b"/usr/bin/distcc\n/usr/../x\n", "BAD 2"),  # a bad line spoils the list
    ("distcc", b"usr/bin/distcc\n", "BAD 1"),
    ("distcc", b"/usr//bin/distcc\n", "BAD 1"),
    ("distcc", b"/usr/bin/./distcc\n", "BAD 1"),
    ("distcc", b"/usr/bin/distcc/\n", "BAD 1"),
    ("distcc", b"/usr/bin/dist cc\n", "BAD 1"),
    ("distcc", b"/usr/bin/distcc # x\n", "BAD 1"),
    ("distcc", b"/\n", "BAD 1"),
    ("distcc", b"#\n\n/usr/bin/distcc\r\n", "BAD 3"),
    ("distcc", b"/usr/bin/distcc\n\x00\n", "BAD 2"),
    ("distcc", b"/usr/bin/distcc", "OK /usr/bin/distcc"),  # no final newline
    ("distcc", b"", "NONE"),
]
