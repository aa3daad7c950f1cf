/* greet.h - greeting strings. */
#ifndef GREET_H
#define GREET_H

#include <stddef.h>

/* Write "Hello, <name>!" into buf (at most size bytes, always terminated).
 * An empty name greets the world.
 * Returns the length the full greeting needs, as snprintf does. */
int greet(char *buf, size_t size, const char *name);

#endif
