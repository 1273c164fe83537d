"""Portage's SOCKSv5 relay, started the way Portage starts it.

    python -m bench.relay PORTAGE_TMPDIR

Runs ``portage.util.socks5.get_socks5_proxy(settings)`` (Portage's own code:
it spawns ``bin/socks5-server.py`` from the installed portage package), waits
with ``proxy.ready()`` on Portage's global event loop (another loop raises
"Future attached to a different loop"), prints "<socket path> <server pid>",
and stops the relay with ``proxy.stop()`` when its standard input closes.
A separate process, so that importing Portage (its warnings about a missing
portage user, its atexit hooks) touches nothing in the benchmark itself.
"""

import os
import sys


def main():
    tmpdir = sys.argv[1]
    # Portage prints warnings at import time on a host without a portage user.
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import portage
        import portage.data
        from portage.util import socks5
        from portage.util._eventloop.global_event_loop import global_event_loop
        portage.data.secpass  # noqa: B018 -- the lazy user lookup warns here
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
    settings = {"PORTAGE_TMPDIR": tmpdir, "PORTAGE_BIN_PATH": portage.const.PORTAGE_BIN_PATH}
    path = socks5.get_socks5_proxy(settings)
    loop = global_event_loop()
    loop.run_until_complete(socks5.proxy.ready())
    print(path, socks5.proxy._proc.pid, flush=True)
    sys.stdin.read()
    loop.run_until_complete(socks5.proxy.stop())
    return 0


if __name__ == "__main__":
    sys.exit(main())
