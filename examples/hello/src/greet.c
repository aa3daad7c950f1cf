/* greet.c - greeting strings. */
#include <stdio.h>

#include "greet.h"

int greet(char *buf, size_t size, const char *name)
{
	if (name[0] == '\0')
		name = "world";
	return snprintf(buf, size, "Hello, %s!", name);
}
