/* test_strings.c - KTAP tests for greet. */
#include "greet.h"
#include "ktap.h"

int main(void)
{
	char buf[16];

	ktap_plan(4);
	greet(buf, sizeof(buf), "Ada");
	ktap_expect_str("name", "Hello, Ada!", buf);
	greet(buf, sizeof(buf), "");
	ktap_expect_str("empty", "Hello, world!", buf);
	ktap_expect_long("truncate", 29, greet(buf, sizeof(buf), "Grace Brewster Hopper"));
	ktap_skip("utf8", "greet does not count characters yet");
	return ktap_exit_code();
}
