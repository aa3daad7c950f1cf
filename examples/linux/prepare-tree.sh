#!/bin/sh
# Turn Debian's linux-source-6.1 tarball into a git tree carrying the labgate
# example plan: prepare-tree.sh DEST  (DEST must not exist yet).
set -eu

SRC_TARBALL=${SRC_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
DEST=$1
if [ -e "$DEST" ]; then
    echo "$0: $DEST already exists" >&2
    exit 1
fi

now() { date +%s; }
step() { echo "prepare-tree: $1 ($(( $(now) - T0 )) s)"; }

# Fixed identity and dates: the import commit (and so every patch made
# against it) is the same on every machine.
export GIT_AUTHOR_NAME="Example Dev" GIT_AUTHOR_EMAIL="dev@example.org"
export GIT_COMMITTER_NAME="Example Dev" GIT_COMMITTER_EMAIL="dev@example.org"
export GIT_AUTHOR_DATE="2024-01-01T00:00:00+00:00"
export GIT_COMMITTER_DATE="2024-01-01T00:00:00+00:00"

T0=$(now)
TMP="$DEST.unpack.$$"
mkdir -p "$TMP"
tar -xf "$SRC_TARBALL" -C "$TMP"
mv "$TMP"/linux-source-6.1 "$DEST"
rmdir "$TMP"
step "unpacked $SRC_TARBALL"

cd "$DEST"
# Debian appends a block ending in "/*" + "!/debian/" to the top-level
# .gitignore, so `git add -A` would add nothing: cut it off.
awk '/^# Debian packaging/ { exit } { print }' .gitignore > .gitignore.new
# The line before the Debian block is a lone "#" that belongs to it.
sed -e '${/^#$/d;}' .gitignore.new > .gitignore
rm -f .gitignore.new
# The kernel's .gitignore ignores every dotfile (".*"), .labgate/ included.
printf '%s\n' '# labgate in-tree plan' '!/.labgate/' >> .gitignore

mkdir -p .labgate
cp "$HERE/plan.yaml" .labgate/plan.yaml
cp "$HERE/boot.config" .labgate/boot.config

git init -q -b master
# -f: the kernel's own .gitignore rules (".*", "tags", ...) match some
# source files (.clang-format, .kunitconfig, every .gitignore,
# selftests/arm64/tags/); upstream tracks them, and the tarball holds no
# build outputs, so add everything.
git add -A -f .
step "git add ($(git ls-files | wc -l) files)"
# gc.auto=0: the commit would otherwise start a background gc that races
# with the explicit one below.
git -c gc.auto=0 commit -q -m "Import linux-source-6.1 with the labgate example plan"
step "git commit $(git rev-parse --short HEAD)"
# Pack now, so that no automatic gc starts later during a checkout or git am.
# LABGATE_PREPARE_GC=0 skips it (85 s here) for throwaway trees, as in the tests.
if [ "${LABGATE_PREPARE_GC:-1}" != 0 ]; then
    git gc -q
    step "git gc ($(du -sm .git | cut -f1) MiB in .git)"
else
    git config gc.auto 0
fi
