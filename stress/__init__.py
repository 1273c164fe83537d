"""Reliability runs for cgnetns (issue 8): ``python -m stress`` (``make stress``).

load     N concurrent cgnetns-run --unshare-net builds, each approving its own
         parent namespace, each making M helper calls through the setuid path
         and (when the installed helper reaches a broker) the broker path.
hostile  malformed requests, connection floods, slow clients and fd floods
         against a real cgnetnsd on a private socket (``--hostile``).
"""
