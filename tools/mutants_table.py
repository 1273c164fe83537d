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
        [T + "test_t10_unsafe_allow_list_or_program[allow-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[allow-dir-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[prog-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[prog-dir-owner-nobody]",
         T + "test_t02_unsafe_pins_directory[owner-nobody]"],
        "open_trusted() accepts files and directories that root does not own"),
    Mutant(
        "allow-check-owner-off", "helper/main.c",
        "\tallow_check_program(program, privileged, 1, &prog);\n",
        "\tallow_check_program(program, privileged, 0, &prog);\n",
        [T + "test_t10_unsafe_allow_list_or_program[allow-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[allow-dir-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[prog-owner-nobody]",
         T + "test_t10_unsafe_allow_list_or_program[prog-dir-owner-nobody]"],
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
# The broker path (helper/notify.c, helper/supervise.c): to be filled in by
# its owners, in the same form, e.g. the rules of notify.c
# task_runs_allowed() and task_in_build(), and supervise.c peer_alive().
# Their tests must run a broker of the mutated sources (a cgnetnsd started
# by the test with a helper built from helper/, not the installed one).

BROKER = [
]

MUTANTS = SETUID + BROKER
