/* mathx.c - small integer helpers. */
#include "mathx.h"

long mathx_add(long a, long b)
{
	return a + b;
}

long mathx_sub(long a, long b)
{
	return a - b;
}

long mathx_mul(long a, long b)
{
	return a * b;
}

long mathx_gcd(long a, long b)
{
	while (b != 0) {
		long r = a % b;

		a = b;
		b = r;
	}
	return a < 0 ? -a : a;
}
