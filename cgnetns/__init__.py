"""cgnetns: let approved programs in a network-sandboxed build reach the network
namespace the build was started from, and nothing else.

Modules: ``cgroups`` (cgroup2 discovery, placement, life cycle), ``namespaces``
(namespace identity and pins), ``tags`` (the trusted.* tag format), ``records``
(run records and locks), ``build`` (the high-level Build object), ``cli``
(the commands).  Importing the package does no work.
"""

__version__ = "0.1.0"
