/* test_math.c - KTAP tests for mathx. */
#include "ktap.h"
#include "mathx.h"

int main(void)
{
	ktap_plan(4);
	ktap_expect_long("add", 5, mathx_add(2, 3));
	ktap_expect_long("sub", -1, mathx_sub(2, 3));
	ktap_expect_long("mul", 42, mathx_mul(6, 7));
	ktap_expect_long("gcd", 6, mathx_gcd(54, -24));
	return ktap_exit_code();
}
