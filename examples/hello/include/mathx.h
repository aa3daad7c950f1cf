/* mathx.h - small integer helpers. */
#ifndef MATHX_H
#define MATHX_H

long mathx_add(long a, long b);
long mathx_sub(long a, long b);
long mathx_mul(long a, long b);
long mathx_gcd(long a, long b);

#endif
