"""The test bed the demo, the tests and the benchmarks share, outside the
installed library: a "remote" build host in a network namespace of its own,
joined by a veth pair, with distccd, sshd and icecream (``topology``), and
``make demo``'s sandboxed build against it (``demo``).  Run from a checkout
(``python3 -m testbed.demo``); ``cgnetns`` itself never imports it."""
