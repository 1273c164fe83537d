"""cgnetns benchmarks: ``python -m bench`` (``make bench``) prints one table.

Parts, each runnable alone with ``--part NAME``:

1. ``helper``  per-call cost of cgnetns-exec as builds call it (the front:
               join path through the set-user-ID helper, pass-through, broker
               path) against true, ``nsenter --net`` and ``ip netns exec``;
               system calls per call; peak RSS of the front, the helper and
               cgnetnsd
2. ``scale``   resolution cost with 1 to 10,000 tagged cgroups, 100 and 5,000
               processes, cgroup depth 1 to 16, against an ancestry walk
3. ``data``    a check (no target) that nothing sits on the data path:
               connect latency and 256 MiB throughput from a sandboxed build,
               both cgnetns paths, Portage's SOCKSv5 relay, and direct
4. ``distcc``  a distcc build of C files against a remote distccd: direct,
               through the set-user-ID helper, through the broker
5. ``setup``   the library's create and teardown, ``cgnetns-run`` against
               ``unshare -n``
6. ``sandbox`` distcc inside Gentoo's real sandbox (2.46): network-sandbox off
               against the broker path; cgnetns-exec over true there against
               the set-user-ID path; the client's system calls

Every figure is a median over repeated runs, next to a baseline measured in
the same run.  Benchmarks are not tests: nothing asserts a timing.  Needs root.
"""
