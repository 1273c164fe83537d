"""Reliability runs for cgnetns: ``python -m stress`` (``make stress``).

load     N concurrent cgnetns-run --unshare-net builds, each approving its own
         parent namespace, each keeping P helper calls in flight, half through
         the set-user-ID path and half through the broker path (both
         required; the run's own cgnetnsd serves the system socket); prints
         the broker path's median and p99 call time (issue 12: 64 builds x 16
         calls in flight, targets 50 ms and 250 ms).
hostile  malformed requests, descriptors before a header, a connection flood
         from another uid, slow clients and a client stalled after "join"
         against a real cgnetnsd on a private socket (``--hostile``).
"""
