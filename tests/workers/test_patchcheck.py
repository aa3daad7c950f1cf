"""Patch safety rules as pure functions: every attack the old regexes let through, and real patches that pass."""

from __future__ import annotations

import base64
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.samples import B4_SERIES
from tests.shared_fixtures import shared_fixture
from workers.errors import InfraError, UserError
from workers.patchcheck import MAX_PATCH_BYTES, check_applied, check_patch, check_patch_size

FROM_LINE = "From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001\n"
SYMLINK_DIFF = """diff --git a/link b/link
new file mode 120000
index 0000000..3594e94
--- /dev/null
+++ b/link
@@ -0,0 +1 @@
+/etc/passwd
\\ No newline at end of file
"""


def _refusal(data: bytes | str) -> str:
    with pytest.raises(UserError) as info:
        check_patch("evil.patch", data.encode() if isinstance(data, str) else data)
    return str(info.value)


def _mail(body: str, cte: str, charset: str = "utf-8") -> bytes:
    """A one-part patch mail whose body the email package encodes the way a mail client might."""
    message = EmailMessage()
    message["From"] = "Mallory <mallory@example.org>"
    message["Subject"] = "[PATCH] innocent"
    message.set_content(body, charset=charset, cte=cte)
    return FROM_LINE.encode() + message.as_bytes()


def _multipart(*parts: tuple[str, str]) -> bytes:
    """A multipart/mixed mail (boundary B0UNDARY) written out by hand from (part headers, body) pairs."""
    text = FROM_LINE + 'Subject: [PATCH] x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="B0UNDARY"\n\n'
    for headers, body in parts:
        text += f"--B0UNDARY\n{headers}\n\n{body}\n"
    return (text + "--B0UNDARY--\n").encode()


def _b64(text: str) -> str:
    return base64.encodebytes(text.encode()).decode()


# --- real patches still pass


@pytest.mark.parametrize("path", sorted((EXAMPLES / "hello" / "patches").glob("*.patch")), ids=lambda path: path.name)
def test_the_example_patches_pass(path: Path) -> None:
    check_patch(path.name, path.read_bytes())


def test_a_b4_series_mbox_passes() -> None:
    check_patch(B4_SERIES.name, B4_SERIES.read_bytes())


def test_a_series_b4_itself_wrote_passes() -> None:
    """Conformance: b4's own test series (../shared/fixtures), cover letter and mboxrd lines included."""
    mbox = shared_fixture("mbox/b4/shazam-git1-just-series.mbox")
    check_patch(mbox.name, mbox.read_bytes())


def test_plain_base64_and_quoted_printable_mails_of_a_normal_patch_pass() -> None:
    normal = "Fix it.\n---\n" + (EXAMPLES / "hello" / "patches" / "pass.patch").read_text().split("---\n", 1)[1]
    for cte in ("8bit", "base64", "quoted-printable"):
        check_patch(f"{cte}.patch", _mail(normal, cte))


def test_prose_that_looks_like_header_lines_outside_a_diff_header_passes() -> None:
    check_patch("prose.patch", b"Subject: x\n\nnew mode 2 is faster\nindex 0..n is scanned first\n")


# --- 1. modes


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("new file mode 120000 ", "evil.patch:2: mode '120000 ' is not a regular file mode"),
        ("new file mode 0120000", "evil.patch:2: mode 0120000 is not a regular file mode (only 100644 and 100755 "
                                  "are accepted)"),
        ("new file mode 120644", "evil.patch:2: mode 120644 is not a regular file mode"),
        ("new file mode  100644", "evil.patch:2: mode ' 100644' is not a regular file mode"),
        ("new file mode 120000", "evil.patch:2: mode 120000 is a symlink; symlinks are not accepted"),
        ("new file mode 160000", "evil.patch:2: mode 160000 is a submodule link (gitlink); submodules are not "
                                 "accepted"),
        ("old mode 100644\nnew mode 120000", "evil.patch:3: mode 120000 is a symlink"),
        ("deleted file mode 160000", "evil.patch:2: mode 160000 is a submodule link"),
        ("index 3594e94..b35c073 120000", "evil.patch:2: mode 120000 is a symlink"),
        ("index 3594e94..b35c073 100644 x", "evil.patch:2: mode '100644 x' is not a regular file mode"),
        ("similarity index 90%\nnew file mode 120000\r", "evil.patch:3: mode 120000 is a symlink"),
    ],
)  # fmt: skip
def test_only_the_two_regular_modes_spelled_exactly_are_accepted(lines: str, message: str) -> None:
    assert _refusal(f"diff --git a/x b/x\n{lines}\n").startswith(message)


@pytest.mark.parametrize(
    "lines",
    ["new file mode 100644", "new file mode 100755", "deleted file mode 100644", "old mode 100644\nnew mode 100755",
     "index 3594e94..b35c073 100644", "new file mode 100644\r"],
)  # fmt: skip
def test_regular_modes_and_deleting_a_regular_file_pass(lines: str) -> None:
    check_patch("ok.patch", f"diff --git a/x b/x\n{lines}\n".encode())


# --- 2. encoded mails, multipart mails, mboxes


def test_a_base64_body_cannot_hide_a_symlink() -> None:
    mail = _mail(f"Innocent.\n---\n{SYMLINK_DIFF}", "base64")
    assert b"120000" not in mail and b"diff --git" not in mail  # what the old raw regexes saw
    assert _refusal(mail) == "evil.patch (mail 1, base64 body):4: mode 120000 is a symlink; symlinks are not accepted"


def test_a_quoted_printable_body_cannot_hide_a_symlink() -> None:
    body = f"Content-Transfer-Encoding: quoted-printable\n\nx\n---\n{SYMLINK_DIFF.replace('new', '=6Eew')}"
    assert "new file mode" not in body
    refusal = _refusal(FROM_LINE + "Subject: x\n" + body)
    assert refusal == (
        "evil.patch (mail 1, quoted-printable body):4: mode 120000 is a symlink; symlinks are not accepted"
    )


def test_the_declared_charset_is_honoured_in_messages() -> None:
    mail = _mail("+++ b/café/../x\n", "base64", charset="iso-8859-1")
    assert "'café/../x' leaves the tree" in _refusal(mail)


@pytest.mark.parametrize(
    ("content_type", "cte"),
    [("text/x-patch", "base64"), ("text/x-diff", "quoted-printable"), ("application/octet-stream", "base64")],
)
def test_every_attachment_is_checked_because_git_mailinfo_applies_every_part(content_type: str, cte: str) -> None:
    body = _b64(SYMLINK_DIFF) if cte == "base64" else SYMLINK_DIFF.replace("new", "=6Eew")
    mail = _multipart(("Content-Type: text/plain", "Innocent."),
                      (f"Content-Type: {content_type}\nContent-Transfer-Encoding: {cte}", body))  # fmt: skip
    assert _refusal(mail).startswith(f"evil.patch (mail 1, part 2, {cte}):")


def test_each_mail_of_an_mbox_is_checked() -> None:
    mbox = _mail("Fine.\n", "8bit") + b"\n" + _mail(f"Evil.\n---\n{SYMLINK_DIFF}", "base64")
    assert _refusal(mbox).startswith("evil.patch (mail 2, base64 body):")


def test_mails_split_only_at_from_lines_git_mailsplit_takes() -> None:
    """A "From " line without a date does not start a mail for git, so what follows is not headers."""
    hidden = _mail(f"Evil.\n---\n{SYMLINK_DIFF}", "base64").replace(FROM_LINE.encode(), b"From mallory\n")
    refusal = _refusal(_mail("Fine.\n", "8bit") + b"\n" + hidden)
    assert refusal == "evil.patch (mail 1): a Content-Transfer-Encoding line outside the MIME part headers"


def test_a_bare_diff_is_read_as_git_reads_it_even_after_leading_whitespace() -> None:
    assert _refusal(" \n\t diff --git a/../x b/../x\n").startswith("evil.patch (mail 1, 7bit body):1: path")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("QUJD\nREVG=\nR0hJ\n", "line 2 is not clean base64"),  # git reads on past padding, Python stops
        ("QUJ\nDREVG\n", "line 1 is not clean base64"),  # git decodes each line on its own
        ("QUJD*REVG\n", "line 1 is not clean base64"),  # git skips stray bytes, Python may not
    ],
)
def test_base64_that_git_and_python_would_decode_differently_is_refused(body: str, problem: str) -> None:
    mail = FROM_LINE + "Subject: x\nContent-Transfer-Encoding: base64\n\n" + body
    assert _refusal(mail) == f"evil.patch (mail 1, base64 body): cannot be decoded: {problem}"


def test_a_quoted_printable_equals_sign_that_is_no_escape_is_refused() -> None:
    mail = FROM_LINE + "Subject: x\nContent-Transfer-Encoding: quoted-printable\n\nmode =1=20000\n"
    assert _refusal(mail).endswith('cannot be decoded: line 1 has an "=" that is not an escape')


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ("Content-Transfer-Encoding: x-base64", "Content-Transfer-Encoding 'x-base64' is not one of"),
        ("Content-Transfer-Encoding: =?utf-8?q?base64?=", "'=?utf-8?q?base64?=' is not one of"),
        ("Content-Type: =?utf-8?q?multipart/mixed;_boundary=3DB0UNDARY?=", "encoded word in a content-type header"),
        ("Content-Transfer-Encoding: 8bit base64", "'8bit base64' is not one of"),
        ("Content-Transfer-Encoding: 8bit\n base64", "'8bit\\n base64' is not one of"),
        ("Content-Transfer-Encoding: 8bit\nContent-Transfer-Encoding: base64", "more than one content-transfer"),
        ("Content-Type: text/plain; boundary=B0UNDARY", "MIME boundaries ['B0UNDARY'] would split"),
        ("Content-Type: message/rfc822", "attached mails are not accepted"),
    ],
)
def test_mime_headers_git_would_read_differently_are_refused(headers: str, problem: str) -> None:
    mail = f"{FROM_LINE}Subject: x\n{headers}\n\n--B0UNDARY\nContent-Transfer-Encoding: base64\n\n{_b64(SYMLINK_DIFF)}"
    assert problem in _refusal(mail)


def test_a_line_git_takes_for_a_boundary_must_be_one_to_python_too() -> None:
    mail = _multipart(("Content-Type: text/plain", f"Innocent.\n--B0UNDARYx\nContent-Transfer-Encoding: base64\n\n"
                                                   f"{_b64(SYMLINK_DIFF)}"))  # fmt: skip
    assert "'--B0UNDARYx' is a MIME boundary to git but not to the email package" in _refusal(mail)


def test_nested_multiparts_are_refused() -> None:
    inner = 'Content-Type: multipart/alternative; boundary="INNER"'
    mail = _multipart((inner, "--INNER\nContent-Type: text/plain\n\nhi\n--INNER--"))
    assert _refusal(mail) == "evil.patch (mail 1): nested MIME parts and attached mails are not accepted"


def test_a_part_git_would_join_to_the_next_one_is_refused() -> None:
    """git keeps no line break between parts: "new file mode 1200" + "00" would make 120000."""
    start = base64.b64encode(b"diff --git a/x b/x\nnew fi").decode()
    mail = _multipart(("Content-Transfer-Encoding: base64", start), ("Content-Type: text/plain", "le mode 120000"))
    assert _refusal(mail).startswith("evil.patch (mail 1, part 1, base64): does not end with a newline")


# --- 3. paths


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('diff --git "a/\\056\\056/etc/passwd" "b/\\056\\056/etc/passwd"', "1: path '../etc/passwd' leaves the tree"),
        ('diff --git "a/..\\n" "b/..\\n"', "1: path '..\\n' leaves the tree"),
        ('diff --git "a/.GIT/config" b/.GIT/config', "1: path '.GIT/config' touches git metadata"),
        ("diff --git a/x y b/x y/../../z", "1: path 'x y b/x y/../../z' leaves the tree"),
        ("diff --git a/x b/.Git/hooks/post-checkout", "1: path 'x b/.Git/hooks/post-checkout' touches git metadata"),
        ("diff --git a//etc/passwd b//etc/passwd", "1: path 'a//etc/passwd b//etc/passwd' leaves the tree"),
        ("diff --git a/x b/x\nrename from x\nrename to ../x", "3: path '../x' leaves the tree"),
        ("diff --git a/x b/x\nrename from x\nrename to .git/hooks/pre-commit", "3: path '.git/hooks/pre-commit'"),
        ('diff --git a/x b/x\ncopy from x\ncopy to "\\056git/config"', "3: path '.git/config' touches git metadata"),
        ("diff --git a/x b/x\ncopy from /etc/passwd", "2: path '/etc/passwd' leaves the tree"),
        ("diff --git a/x b/x\nrename old ../x", "2: path '../x' leaves the tree"),
        ("diff --git a/x b/x\n--- a/../x", "2: path '../x' leaves the tree"),
        ("diff --git a/x b/x\n+++ b//etc/passwd", "2: path '/etc/passwd' leaves the tree"),
        ('+++ "b/\\056git/config"', "1: path '.git/config' touches git metadata"),
        ("--- a/x\n+++ b/../y\n@@ -1 +1 @@", "2: path '../y' leaves the tree"),  # a traditional diff
        ("+++ b/..\t2024-01-01 00:00:00", "1: path '..\\t2024-01-01 00:00:00' leaves the tree"),  # git ends it at \t
        ('diff --git "a/x b/x', "1: malformed quoted path"),
        ('diff --git a/x b/x\nrename to "\\q"', "2: malformed quoted path"),
        ('diff --git "a/caf\\351" "b/caf\\351"', "1: path 'caf\\udce9' is not UTF-8"),
    ],
)
def test_paths_in_every_place_git_reads_them_keep_to_the_tree(lines: str, problem: str) -> None:
    assert _refusal(lines + "\n").startswith(f"evil.patch:{problem}")


@pytest.mark.parametrize(
    "lines",
    ["diff --git a/foo bar.c b/foo bar.c", 'diff --git "a/caf\\303\\251" "b/caf\\303\\251"', "--- /dev/null",
     "diff --git a/x.c b/y.c\nrename from x.c\nrename to y.c", "diff --git a/.gitignore b/.gitignore",
     "diff --git a/b..c b/b..c", "+++ b/dir/file\t2024-01-01 00:00:00"],
)  # fmt: skip
def test_ordinary_names_pass(lines: str) -> None:
    check_patch("ok.patch", (lines + "\n").encode())


# --- binary content and size


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ("diff --git a/x b/x\nGIT binary patch", "2: binary patches are not accepted"),
        ("diff --git a/x b/x\nBinary files a/x and b/x differ", "2: binary patches are not accepted"),
        ("diff --git a/x b/x\n@@ -0,0 +1 @@\n+a\0b", "3: NUL byte: binary content is not accepted"),
    ],
)
def test_binary_content_is_refused(lines: str, problem: str) -> None:
    assert _refusal(lines + "\n") == f"evil.patch:{problem}"


def test_the_size_cap_is_checked_before_anything_is_stored() -> None:
    check_patch_size("ok.patch", MAX_PATCH_BYTES)
    with pytest.raises(UserError, match=rf"^big.patch: {MAX_PATCH_BYTES + 1} bytes is over the {MAX_PATCH_BYTES}"):
        check_patch_size("big.patch", MAX_PATCH_BYTES + 1)
    with pytest.raises(UserError, match="byte cap"):
        check_patch("big.patch", b"x" * (MAX_PATCH_BYTES + 1))


# --- 5. after git am: parsing `git diff --raw --numstat -z --no-renames`


def _raw(mode: str, path: str, added: str = "1", status: str = "A") -> str:
    return f":000000 {mode} 0000000 3594e94 {status}\0{path}\0{added}\t{'-' if added == '-' else '0'}\t{path}\0"


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (_raw("120000", "link"), "after applying: link is a symlink (mode 120000); symlinks are not accepted"),
        (_raw("160000", "sub"), "after applying: sub is a submodule link (gitlink) (mode 160000); submodules are not "
                                "accepted"),
        (_raw("100644", "blob.bin", added="-"), "after applying: blob.bin is a binary file; binary files are not "
                                                "accepted"),
        (_raw("040000", "dir"), "after applying: dir has mode 040000 (only 100644 and 100755 are accepted)"),
        (_raw("100644", "a/../b"), "after applying: path 'a/../b' leaves the tree"),
        (_raw("100644", "/etc/passwd"), "after applying: path '/etc/passwd' leaves the tree"),
        (_raw("100644", "x/.GIT/config"), "after applying: path 'x/.GIT/config' touches git metadata"),
        (_raw("100644", "ok") + ":100644 100644 1 2 R100\0ok\0.git/x\0", "after applying: path '.git/x' touches git"),
        ("1\t0\t\0old\0../new\0", "after applying: path '../new' leaves the tree"),
    ],
)  # fmt: skip
def test_what_git_applied_is_checked(output: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        check_applied(output)
    assert str(info.value).startswith(message)


def test_regular_files_deletions_and_allowed_kinds_pass_the_applied_check() -> None:
    check_applied(_raw("100644", "a b.c") + _raw("100755", "run.sh") + _raw("000000", "gone", status="D") + "")
    check_applied(_raw("120000", "link"), allow_symlinks=True)
    check_applied(_raw("100644", "blob.bin", added="-"), allow_binary=True)
    with pytest.raises(UserError, match="submodule"):
        check_applied(_raw("160000", "sub"), allow_symlinks=True, allow_binary=True)


@pytest.mark.parametrize("output", [":100644 100644 1 2\0x\0", ":100644 100644 1 2 M\0", "1\t0\0"])
def test_git_output_we_cannot_read_fails_closed(output: str) -> None:
    with pytest.raises(InfraError):
        check_applied(output)
