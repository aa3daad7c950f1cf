"""A refused patch is named by its mail's Subject and Message-Id, on one safe, short line."""

from __future__ import annotations

from workers.patchname import MAX_MESSAGE_ID, MAX_SUBJECT, patch_label, shown

MAIL = b"Subject: [PATCH 2/2] hello: add a logo\nMessage-Id: <x-2@example.org>\n\nbody\n"


def test_a_mail_is_named_by_its_subject_and_message_id() -> None:
    assert patch_label(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n" + MAIL) == (
        'patch "[PATCH 2/2] hello: add a logo" <x-2@example.org>'
    )


def test_a_bare_diff_has_no_name_and_one_header_is_enough() -> None:
    assert patch_label(b"diff --git a/x b/x\n--- a/x\n+++ b/x\n") is None
    assert patch_label(b"Subject: [PATCH] fix\n\n") == 'patch "[PATCH] fix"'
    assert patch_label(b"Message-Id: <only@example.org>\n\n") == "patch <only@example.org>"


def test_attack_encoded_line_breaks_escapes_and_bidi_in_a_subject_stay_on_one_inert_line() -> None:
    mail = (b"Subject: =?utf-8?q?[PATCH]_ok=0D=0AX-Injected:_yes=1B[2J=E2=80=AE?=\n"
            b"Message-Id: <evil\x1b]0;title\x07@example.org>\n\n")  # fmt: skip
    label = patch_label(mail)
    assert label is not None
    assert label.isprintable() and "\x1b" not in label and "\u202e" not in label
    assert label == 'patch "[PATCH] ok X-Injected: yes\ufffd[2J\ufffd" <evil\ufffd]0;title\ufffd@example.org>'


def test_attack_long_names_are_cut_so_the_rule_after_them_stays_visible() -> None:
    mail = b"Subject: [PATCH] " + b"a" * 5000 + b"\nMessage-Id: <" + b"b" * 5000 + b"@example.org>\n\n"
    label = patch_label(mail)
    assert label is not None and len(label) <= len('patch "" ') + MAX_SUBJECT + MAX_MESSAGE_ID
    assert label.endswith("…") and '…" <' in label


def test_bytes_that_are_not_utf8_and_broken_encoded_words_are_shown_not_raised() -> None:
    assert patch_label(b"Subject: caf\xe9 =?utf-8?b?!!!?=\nMessage-Id: <a\xff@example.org>\n\n") == (
        'patch "caf\ufffd" <a\ufffd@example.org>'
    )
    assert shown("a\n\tb\u2028c", 10) == "a b c"
