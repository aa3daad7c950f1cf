#!/bin/sh
# GIT_ASKPASS for a private checkout: git asks for a user name, then a password; both come
# from the job's credential file (line 1: user, line 2: token), which the control side wrote
# for this one job and which is removed right after. Nothing of it reaches argv, a URL,
# git's config or a log.
case "$1" in
	Username*) sed -n 1p "$LABGATE_GIT_CREDENTIAL" ;;
	*) sed -n 2p "$LABGATE_GIT_CREDENTIAL" ;;
esac
