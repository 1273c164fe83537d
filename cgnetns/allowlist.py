"""The allow list: which programs cgnetns-exec may run with the network.

Owns the format of ``/etc/cgnetns/allow`` (one absolute, canonical path a
line, ``#`` comments, blanks around a path ignored; one bad line makes the
whole list bad) and the lookup of a program in it, exactly as the helper does
them (helper/parse.c: ``path_is_canonical``, ``parse_allow``).  Pure: the
callers read the file.  tests/parser_cases.py holds the cases both
implementations pass.
"""

ALLOW_MAX = 64 * 1024   # the largest list the helper reads


def canonical_path(p):
    """An allow-list entry as cgnetns-exec accepts it: absolute, no empty,
    ``.`` or ``..`` component, no trailing ``/``, not ``/`` itself, no blank
    or control character, components of at most 255 bytes."""
    if isinstance(p, str):
        p = p.encode(errors="surrogateescape")
    if len(p) < 2 or len(p) >= 4096 or not p.startswith(b"/"):
        return False
    if any(c <= 0x20 or c == 0x7F for c in p):
        return False
    return all(0 < len(c) <= 255 and c not in (b".", b"..") for c in p[1:].split(b"/"))


def entries(data):
    """The entries of the list's bytes: ``(entries, None)``, or ``(None, N)``
    when line N (1-based) is bad (a NUL counts for the line it is on)."""
    nul = data.find(b"\0")
    if nul >= 0:
        return None, data[:nul].count(b"\n") + 1
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        line = raw.strip(b" \t")
        if not line or line.startswith(b"#"):
            continue
        if not canonical_path(line):
            return None, n
        out.append(line)
    return out, None


def lookup(data, program):
    """PROGRAM in the list: ``("OK", entry)`` -- by exact absolute path, or the
    first entry whose basename is the bare name --, ``("NONE", None)``, or
    ``("BAD", line)`` when the list is bad."""
    found, bad = entries(data)
    if found is None:
        return "BAD", bad
    if isinstance(program, str):
        program = program.encode(errors="surrogateescape")
    for e in found:
        if program.startswith(b"/"):
            if e == program:
                return "OK", e
        elif program and e.rsplit(b"/", 1)[1] == program:
            return "OK", e
    return "NONE", None
