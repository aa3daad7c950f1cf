#!/bin/sh
# labgate's compiler wrapper for kernel builds ($LABGATE_CC, bound read-only at /labgate/bin/cc):
# `cc COMPILER ARGS...` runs `ccache COMPILER ARGS...` and keeps what the compiler said about a unit
# in OBJ.labgate-diag next to its object, so that the worker can read the warnings of every unit of
# a warm build dir, also of those this build did not recompile (workers/kbuild.py).
out=
compile=
expect_out=
for arg in "$@"; do
    if [ -n "$expect_out" ]; then out=$arg; expect_out=; continue; fi
    case "$arg" in
        -o) expect_out=1 ;;
        -o*) out=${arg#-o} ;;
        -c) compile=1 ;;
    esac
done
case "$out" in
    *.o) ;;
    *) exec ccache "$@" ;;  # a link, a preprocessor run, a cc-option probe: nothing to keep
esac
[ -n "$compile" ] || exec ccache "$@"
diag="$out.labgate-diag"
tmp="$diag.tmp.$$"
# A unit whose object cannot be written next to it (a build into a read-only place) just compiles.
( : > "$tmp" ) 2>/dev/null || exec ccache "$@"
ccache "$@" 2>"$tmp"
status=$?
cat "$tmp" >&2
mv -f "$tmp" "$diag"
exit $status
