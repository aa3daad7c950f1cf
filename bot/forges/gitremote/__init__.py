"""Plain git remotes (git.kernel.org and the like): no webhooks, so their staging branches are polled."""
