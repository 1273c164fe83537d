/* preload.c: a library for LD_PRELOAD in tests (not installed).  A program
 * that has it preloaded finds the symbol cgnetns_test_preloaded (probe.c
 * looks it up with dlsym).  It sits in a test directory, so ld.so will not
 * preload it into a set-id program. */
int cgnetns_test_preloaded = 1;
