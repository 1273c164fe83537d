"""The mutants of `make mutants` (tools/mutants.py): single-point bugs in the
helper, each with the tests that must kill it.

A mutant replaces `old` by `new` in `file` (relative to the checkout); `old`
must occur there exactly once, or tools/mutants.py refuses to run and names
the entry: update it together with the code it mutates.  `tests` are pytest
node ids run (with -x) in a copy of the checkout whose helper/ carries the
mutant, so they must exercise helpers built from helper/ by the tests
themselves: HelperEnv's private variants (henv.variants["musl"], ["glibc"],
["asan"]), never the installed helper, which stays unmutated.  A mutant is
killed when at least one of its tests FAILS (an error in setup does not
count).  Keep `tests` small: each mutant costs one pytest session.
"""

from collections import namedtuple

Mutant = namedtuple("Mutant", "name file old new tests why")

T = "tests/test_helper_threats.py::"
S = "tests/test_helper_sanitized.py::"

# ---------------------------------------------------------------------------
# The set-user-ID path (helper/main.c and what it calls).

DROP_KERNEL = T + "test_t14_drop_checks_refuse_what_the_kernel_leaves[musl-%s]"
DROP_FAULT = T + "test_t14_drop_checks_refuse_a_lying_kernel[musl-%s]"

SETUID = [
    Mutant(
        "pin-nsid-unchecked", "helper/pin.c",
        "\t\tif (nsid != t->nsid)\n",
        "\t\tif (0 && nsid != t->nsid)\n",
        [T + "test_t07_namespace_id_differs[musl]", S + "test_asan_refusals[nsid]"],
        "the pin's kernel namespace id is not compared with the tag's (inode reuse)"),
    Mutant(
        "path-owner-unchecked", "helper/path.c",
        "\tif (check_owner && st->st_uid != 0)\n",
        "\tif (0 && check_owner && st->st_uid != 0)\n",
        [T + "test_t10_unsafe_allow_list_or_program[musl-allow-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-allow-dir-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-prog-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-prog-dir-owner-nobody]",
         T + "test_t02_unsafe_pins_directory[musl-owner-nobody]"],
        "open_trusted() accepts files and directories that root does not own"),
    Mutant(
        "allow-check-owner-off", "helper/main.c",
        "\tallow_check_program(program, privileged, 1, &prog);\n",
        "\tallow_check_program(program, privileged, 0, &prog);\n",
        [T + "test_t10_unsafe_allow_list_or_program[musl-allow-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-allow-dir-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-prog-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[musl-prog-dir-owner-nobody]"],
        "the privileged path checks the allow list and program without ownership"),
    Mutant(
        "drop-ids-unchecked", "helper/drop.c",
        "\t\tdie(EXIT_REFUSE, \"privilege drop failed: ids not the caller's\");\n",
        "\t\t(void)0;\n",
        [DROP_FAULT % "setresuid-does-nothing"],
        "the ids are not read back after the drop"),
    Mutant(
        "drop-groups-unchecked", "helper/drop.c",
        "\t\tdie(EXIT_REFUSE, \"privilege drop failed: groups not the caller's\");\n",
        "\t\t(void)0;\n",
        [DROP_FAULT % "groups-differ"],
        "the supplementary groups are not read back after the drop"),
    Mutant(
        "drop-regain-root-unchecked", "helper/drop.c",
        "\t\t\tdie(EXIT_REFUSE, \"privilege drop failed: root could be regained\");\n",
        "\t\t\t(void)0;\n",
        [DROP_KERNEL % "no_setuid_fixup", DROP_FAULT % "setuid0-succeeds",
         DROP_FAULT % "seteuid0-succeeds", DROP_FAULT % "setresuid000-succeeds"],
        "regaining root after the drop is not tried (the audit's surviving mutant)"),
    Mutant(
        "drop-caps-unchecked", "helper/drop.c",
        "\t\t\tdie(EXIT_REFUSE, \"privilege drop failed: capabilities left\");\n",
        "\t\t\t(void)0;\n",
        [DROP_KERNEL % "no_setuid_fixup-without-setuid",
         DROP_KERNEL % "no_setuid_fixup-unprivileged-without-setuid"],
        "capabilities left after the drop are not refused (the audit's surviving mutant)"),
    Mutant(
        "drop-group-root-unchecked", "helper/drop.c",
        "\t\t\tdie(EXIT_REFUSE, \"privilege drop failed: group root could be regained\");\n",
        "\t\t\t(void)0;\n",
        [DROP_FAULT % "setgid0-succeeds", DROP_FAULT % "setegid0-succeeds"],
        "regaining group root after the drop is not tried"),
    Mutant(
        "tag-from-user-xattr", "helper/helper.h",
        "#define CGNETNS_TAG_XATTR \"trusted.cgnetns\"\n",
        "#define CGNETNS_TAG_XATTR \"user.cgnetns\"\n",
        [T + "test_t03_user_xattr_on_own_cgroup_is_not_a_tag[musl]",
         S + "test_asan_join_as_root"],
        "the tag is read from user.cgnetns, which a cgroup's owner can write"),
    Mutant(
        "tag-owner-unchecked", "helper/cgroup.c",
        "\tif (st.st_uid != 0)\n",
        "\tif (0 && st.st_uid != 0)\n",
        [T + "test_t03_tag_on_cgroup_not_owned_by_root[musl]"],
        "a tagged cgroup that root does not own is believed"),
    Mutant(
        "membership-always-listed", "helper/cgroup.c",
        "\treturn found;\n",
        "\treturn found || 1;\n",
        [T + "test_t05_cgroup2_mount_of_another_subtree[musl]",
         S + "test_asan_refusals[cgroup-namespace]"],
        "lists_pid(): the caller is never looked up in cgroup.procs"),
    Mutant(
        "membership-unchecked-on-the-walk", "helper/cgroup.c",
        "\tif (!lists_pid(leaf, s->pid))\n",
        "\tif (0 && !lists_pid(leaf, s->pid))\n",
        [T + "test_t05_cgroup2_mount_of_another_subtree[musl]"],
        "a tag found by the walk is used without the membership check "
        "(a cgroup2 mount of another subtree)"),
    Mutant(
        "membership-unchecked-in-a-cgroup-namespace", "helper/cgroup.c",
        "\tif (!reader_in_initial_cgroupns() && !lists_pid(leaf, s->pid))\n",
        "\tif (0 && !reader_in_initial_cgroupns() && !lists_pid(leaf, s->pid))\n",
        [S + "test_asan_refusals[cgroup-namespace]"],
        "a path read in another cgroup namespace is not checked at once"),
    Mutant(
        "not-undumpable", "helper/main.c",
        "\t\tprctl(PR_SET_DUMPABLE, 0, 0, 0, 0);\n",
        "\t\t(void)0;\n",
        [T + "test_t12_no_core_dump_once_privileged[musl-2]",
         T + "test_t12_no_core_dump_once_privileged[musl-1]"],
        "the privileged helper stays dumpable (a core of it after root's files were read)"),
]

# ---------------------------------------------------------------------------
# The broker path (helper/supervise.c, helper/notify.c, resolve.c step 0).
# Their tests run the private broker of tests/test_helper_threats.py: a
# cgnetnsd of the copy whose --supervise mode is the private musl variant,
# built from the copy's helper/, so the mutant is in the broker's side (and in
# the supervisor it starts) as well as in the client.  The re-check of a
# notification (SECCOMP_IOCTL_NOTIF_ID_VALID) is made to matter
# deterministically: a root strace holds the supervisor right after it
# received the notification, a signal withdraws it meanwhile (the task calls
# socket() again), and exactly one socket() may follow.

BROKER_T = T + "test_t14_broker_supervisor_is_the_caller[%s]"

BROKER = [
    Mutant(
        "supervisor-any-family", "helper/notify.c",
        "\t\t\t      (domain == AF_INET || domain == AF_INET6) &&\n",
        "\t\t\t      1 &&\n",
        ["tests/test_broker.py::test_t22_only_inet_sockets_are_ever_minted"],
        "a socket() of any family the caller's own filter sends is minted (an AF_UNIX "
        "socket in the approved namespace reaches its abstract names)"),
    Mutant(
        "supervisor-any-executable", "helper/notify.c",
        "static int task_runs_allowed(int proc_fd, unsigned pid, const struct supervision *sv)\n"
        "{\n",
        "static int task_runs_allowed(int proc_fd, unsigned pid, const struct supervision *sv)\n"
        "{\n\tif (1)\n\t\treturn 1;\n",
        [T + "test_t17_what_an_allow_listed_program_runs[broker]"],
        "task_runs_allowed() always true: what an allow-listed program runs is minted too"),
    Mutant(
        "supervisor-any-cgroup", "helper/notify.c",
        "static int task_in_build(int proc_fd, unsigned pid, const struct supervision *sv)\n{\n",
        "static int task_in_build(int proc_fd, unsigned pid, const struct supervision *sv)\n"
        "{\n\tif (1)\n\t\treturn 1;\n",
        [T + "test_t16_a_connection_handed_to_a_process_outside_the_build"],
        "task_in_build() always true: a listener relayed from outside the build is served"),
    Mutant(
        "peer-alive-no-op", "helper/supervise.c",
        "static void peer_alive(const struct peer *pe, int proc_fd)\n{\n",
        "static void peer_alive(const struct peer *pe, int proc_fd)\n{\n\tif (1)\n\t\treturn;\n",
        [T + "test_t16_a_peer_that_exited_after_connecting_gets_nothing"],
        "peer_alive() checks nothing: a peer that has gone is judged by what its pid shows"),
    Mutant(
        "peer-alive-zombie-unchecked", "helper/supervise.c",
        "\tif (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')\n",
        "\tif (!p || p[1] != ' ')\n",
        [T + "test_t16_a_peer_that_exited_after_connecting_gets_nothing"],
        "peer_alive() takes a zombie (a connector that exited, not yet reaped) for the peer"),
    Mutant(
        "supervisor-stays-root", "helper/notify.c",
        "\tdrop_privileges(c);\n",
        "\t(void)c;\n",
        [BROKER_T % "nobody"],
        "notify_enter() skips the drop to the peer's connect-time ids: the supervisor, and "
        "every socket it mints, stays root's (uid 0, CAP_SYS_PTRACE)"),
    Mutant(
        "supervisor-keeps-capabilities", "helper/notify.c",
        "\tdrop_capabilities();\n",
        "\t(void)0;\n",
        [BROKER_T % "root"],
        "notify_enter() keeps root's capabilities for a root caller (a raw socket its own "
        "bounding set forbids)"),
    Mutant(
        "supervisor-uid-not-the-peers", "helper/supervise.c",
        "\t\t.ruid = pe->cred.uid, .euid = pe->cred.uid, .suid = pe->cred.uid,\n",
        "\t\t.ruid = 0, .euid = pe->cred.uid, .suid = pe->cred.uid,\n",
        [BROKER_T % "nobody"],
        "the supervisor's uid is not SO_PEERCRED's (root's instead)"),
    Mutant(
        "supervisor-gid-not-the-peers", "helper/supervise.c",
        "\t\t.rgid = pe->cred.gid, .egid = pe->cred.gid, .sgid = pe->cred.gid,\n",
        "\t\t.rgid = 0, .egid = pe->cred.gid, .sgid = pe->cred.gid,\n",
        [BROKER_T % "nobody"],
        "the supervisor's gid is not SO_PEERCRED's (root's group instead)"),
    Mutant(
        "supervisor-groups-not-the-peers", "helper/supervise.c",
        "\t\t.ngroups = pe->ngroups, .groups = peer_groups, .groups_preset = 0,\n",
        "\t\t.ngroups = 0, .groups = peer_groups, .groups_preset = 0,\n",
        [BROKER_T % "nobody"],
        "the supervisor's groups are not SO_PEERGROUPS' (none instead)"),
    Mutant(
        "supervisor-no-new-privs-unset", "helper/notify.c",
        "\tif (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)\n",
        "\tif (0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)\n",
        [BROKER_T % "nobody"],
        "the supervisor runs without no_new_privs"),
    Mutant(
        "notification-validity-unchecked", "helper/notify.c",
        "\t\tif (ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) < 0)\n",
        "\t\tif (0 && ioctl(listener, CG_SECCOMP_IOCTL_NOTIF_ID_VALID, &req.id) < 0)\n",
        [T + "test_t16_a_notification_no_longer_pending_is_not_acted_on"],
        "the supervisor acts on a notification after reading /proc/PID without checking that "
        "it is still pending (a pid that may name another task by then)"),
    Mutant(
        "request-nul-accepted", "helper/supervise.c",
        "\tif (strlen(buf + BROKER_HEADER_SIZE) != want - BROKER_HEADER_SIZE)\n",
        "\tif (0 && strlen(buf + BROKER_HEADER_SIZE) != want - BROKER_HEADER_SIZE)\n",
        [T + "test_t15_malformed_requests_are_refused_exactly[nul-after-a-listed-name]"],
        "read_request() accepts a NUL in the name: a listed name, NUL, anything is the listed "
        "name"),
    Mutant(
        "cgroup-namespace-rule-removed", "helper/resolve.c",
        "\t\tif (a.st_dev != b.st_dev || a.st_ino != b.st_ino)\n",
        "\t\tif (0 && (a.st_dev != b.st_dev || a.st_ino != b.st_ino))\n",
        [T + "test_t05_own_cgroup_namespace[broker]",
         T + "test_t05_cgroup_namespace_path_confusion[broker]"],
        "resolve.c step 0 gone: a peer in a cgroup namespace of its own is judged (the one "
        "rule for both paths broken)"),
    Mutant(
        "supervise-dumpable", "helper/supervise.c",
        "\t/* No core dump, no /proc access by anyone but root while root. */\n"
        "\tprctl(PR_SET_DUMPABLE, 0, 0, 0, 0);\n",
        "\t/* No core dump, no /proc access by anyone but root while root. */\n"
        "\t(void)0;\n",
        [T + "test_t12_broker_supervise_process_is_root_and_not_dumpable"],
        "the supervise process (root, holding what it read as root) stays dumpable"),
    Mutant(
        "supervisor-dumpable", "helper/notify.c",
        "\tprctl(PR_SET_DUMPABLE, 0, 0, 0, 0);\n}\n",
        "\t(void)0;\n}\n",
        [T + "test_t12_broker_supervisor_is_not_dumpable"],
        "the supervisor (the caller's uid) stays dumpable where fs.suid_dumpable is not 0: the "
        "caller could ptrace it"),
    Mutant(
        "supervise-mode-for-users", "helper/supervise.c",
        "\tif (getuid() != 0 || geteuid() != 0 || getauxval(AT_SECURE))\n",
        "\tif (0 && (getuid() != 0 || geteuid() != 0 || getauxval(AT_SECURE)))\n",
        [T + "test_t13_supervise_mode_is_not_reached_through_the_set_user_id_bit"],
        "--supervise runs through the set-user-ID bit (euid 0 for any user)"),
    Mutant(
        "broker-allow-check-owner-off", "helper/supervise.c",
        "\tallow_check_program(program, 1, 1, &prog);\n",
        "\tallow_check_program(program, 1, 0, &prog);\n",
        [T + "test_t10_unsafe_allow_list_or_program[broker-allow-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[broker-prog-owner-nobody]"],
        "the broker's side checks the allow list and program without ownership"),
]

MUTANTS = SETUID + BROKER
