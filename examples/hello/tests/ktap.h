/* ktap.h - print a KTAP version 1 document from a test program. */
#ifndef KTAP_H
#define KTAP_H

#include <stdio.h>
#include <string.h>

/* kselftest's exit codes */
#define KTAP_EXIT_PASS 0
#define KTAP_EXIT_FAIL 1
#define KTAP_EXIT_SKIP 4

static int ktap_number;
static int ktap_failures;

static inline void ktap_plan(int count)
{
	printf("KTAP version 1\n1..%d\n", count);
}

static inline void ktap_result(int ok, const char *name)
{
	ktap_number++;
	if (!ok)
		ktap_failures++;
	printf("%s %d %s\n", ok ? "ok" : "not ok", ktap_number, name);
}

static inline void ktap_skip(const char *name, const char *reason)
{
	printf("ok %d %s # SKIP %s\n", ++ktap_number, name, reason);
}

static inline void ktap_expect_long(const char *name, long expected, long got)
{
	if (expected != got)
		printf("# %s: expected %ld, got %ld\n", name, expected, got);
	ktap_result(expected == got, name);
}

static inline void ktap_expect_str(const char *name, const char *expected, const char *got)
{
	int same = strcmp(expected, got) == 0;

	if (!same)
		printf("# %s: expected \"%s\", got \"%s\"\n", name, expected, got);
	ktap_result(same, name);
}

/* Skip the whole program: an empty plan with a reason, exit code 4. */
static inline int ktap_skip_all(const char *reason)
{
	printf("KTAP version 1\n1..0 # SKIP %s\n", reason);
	return KTAP_EXIT_SKIP;
}

static inline int ktap_exit_code(void)
{
	return ktap_failures ? KTAP_EXIT_FAIL : KTAP_EXIT_PASS;
}

#endif
