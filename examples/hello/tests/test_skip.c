/* test_skip.c - a test that needs hardware this target does not have. */
#include <unistd.h>

#include "ktap.h"

#define WIDGET "/dev/widget0"

int main(void)
{
	if (access(WIDGET, R_OK | W_OK) != 0)
		return ktap_skip_all("needs hardware feature X (" WIDGET ")");
	ktap_plan(1);
	ktap_result(1, "widget");
	return ktap_exit_code();
}
