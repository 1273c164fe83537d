"""cgnetns benchmarks: ``python -m bench`` (``make bench``) prints one table.

Parts, each runnable alone with ``--part NAME``:

1. ``helper``  per-call cost of cgnetns-exec (join, pass-through, broker)
               against true, ``nsenter --net`` and ``ip netns exec``; peak RSS
2. ``scale``   resolution cost with 1 to 10,000 tagged cgroups, 100 and 5,000
               processes, cgroup depth 1 to 16, against a process-tree scan
3. ``data``    connect latency and 256 MiB throughput from a sandboxed build:
               cgnetns, Portage's SOCKSv5 relay, and direct
4. ``distcc``  a distcc build of C files against a remote distccd: direct,
               through the set-user-ID helper, through the broker
5. ``setup``   the library's create and teardown, ``cgnetns-run`` against
               ``unshare -n``

Every figure is a median over repeated runs, next to a baseline measured in
the same run.  Benchmarks are not tests: nothing asserts a timing.  Needs root.
"""
