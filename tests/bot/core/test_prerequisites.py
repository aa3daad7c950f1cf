"""Prerequisites named by b4's trailers, resolved among recorded series: order, pins, and what is refused."""

from __future__ import annotations

from bot.core.patch_id import stable_patch_id
from bot.core.prerequisites import Prerequisites, Recorded, resolve_prerequisites
from bot.core.series import Mail, Trailers, parse_series


def diff(path: str, line: str) -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..1111111\n--- /dev/null\n"
            f"+++ b/{path}\n@@ -0,0 +1 @@\n+{line}\n")  # fmt: skip


def recorded(label: str, diffs: list[str], *, change_id: str | None = None, version: int = 1,
             total: int | None = None) -> Recorded:  # fmt: skip
    """A series of `diffs` as its decoded mails (a cover letter with its change-id), and git am's bytes."""
    total = total or len(diffs)
    tag = "PATCH" if version == 1 else f"PATCH v{version}"

    def mail(index: int, body: str) -> Mail:
        return Mail((("From", "Alice <alice@example.org>"), ("Date", "Wed, 04 Mar 2026 10:15:00 +0100"),
                     ("Subject", f"[{tag} {index}/{total}] part {index}"),
                     ("Message-Id", f"<{label.replace(' ', '-')}-{index}@example.org>")), body)  # fmt: skip

    cover = mail(0, f"cover\n\nchange-id: {change_id}\n" if change_id else "cover\n")
    mails = [cover, *(mail(i, f"part {i}\n---\n{d}\n-- \n2.39.5\n") for i, d in enumerate(diffs, 1))]
    series = parse_series(mails)
    return Recorded(label, series, tuple((f"{i:04d}.patch", m.body.encode()) for i, m in enumerate(mails[1:], 1)))


GCD = [diff("GCD", "gcd of negatives"), diff("GCD2", "and of zero")]
GCD_IDS = [stable_patch_id(d) or "" for d in GCD]


def names(found: Prerequisites) -> list[str]:
    return [name for name, _ in found.patches]


def test_a_change_id_brings_that_version_whole_in_patch_order_and_its_patch_ids_confirm_it() -> None:
    v2 = recorded("series 5 v2", GCD[:1], change_id="gcd", version=2)
    v3 = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    other = recorded("series 7 v1", [diff("OTHER", "x")], change_id="other")
    found = resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v3",), prerequisite_patch_ids=tuple(GCD_IDS)),
                                  [other, v3, v2])  # fmt: skip
    assert not found.missing
    assert names(found) == ["prerequisite series 6 v3 0001.patch", "prerequisite series 6 v3 0002.patch"]
    assert found.applied == ("change-id gcd:v3 (series 6 v3)",) and found.used == (1,)
    # Without a version: the newest recorded; a named version: that one.
    assert names(resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd",)), [v2, v3]))[1].endswith("0002.patch")
    assert resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v2",)), [v3, v2]).applied == (
        "change-id gcd:v2 (series 5 v2)",)  # fmt: skip


def test_patch_ids_alone_bring_single_patches_in_the_order_named() -> None:
    series = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    resent = recorded("series 9 v4", GCD, change_id="gcd", version=4)  # the same diffs again: no ambiguity
    found = resolve_prerequisites(Trailers(prerequisite_patch_ids=(GCD_IDS[1], GCD_IDS[0])), [resent, series])
    assert names(found) == ["prerequisite series 9 v4 0002.patch", "prerequisite series 9 v4 0001.patch"]
    assert found.applied == (f"patch-id {GCD_IDS[1][:12]} (series 9 v4 patch 2/2)",
                             f"patch-id {GCD_IDS[0][:12]} (series 9 v4 patch 1/2)")  # fmt: skip


def test_what_is_not_recorded_is_named_and_nothing_is_applied() -> None:
    series = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    unknown = "0" * 40
    found = resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v3", "nope:v1"),
                                           prerequisite_patch_ids=(*GCD_IDS, unknown)), [series])  # fmt: skip
    assert found.patches == () and found.applied == ()
    assert found.missing == ("change-id nope:v1", f"patch-id {unknown}")
    assert found.missing_text() == f"change-id nope:v1, patch-id {unknown}"
    many = Prerequisites(missing=tuple(f"patch-id {n}" for n in range(8)))
    assert many.missing_text() == "patch-id 0, patch-id 1, patch-id 2, patch-id 3, patch-id 4 and 3 more"


def test_an_incomplete_series_is_no_prerequisite() -> None:
    partial = recorded("series 6 v3", GCD[:1], change_id="gcd", version=3, total=2)  # 1/2 only
    assert not partial.series.is_complete
    assert resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v3",)), [partial]).missing == (
        "change-id gcd:v3",)  # fmt: skip


def test_attack_a_forged_series_claiming_the_change_id_is_not_taken_when_patch_ids_pin_the_real_one() -> None:
    real = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    forged = recorded("series 66 v3", [diff("GCD", "rm -rf ~"), GCD[1]], change_id="gcd", version=3)  # newer
    trailers = Trailers(prerequisite_change_ids=("gcd:v3",), prerequisite_patch_ids=tuple(GCD_IDS))
    assert resolve_prerequisites(trailers, [forged, real]).applied == ("change-id gcd:v3 (series 6 v3)",)
    only_forged = resolve_prerequisites(trailers, [forged])
    assert only_forged.patches == ()
    assert only_forged.missing == ("change-id gcd:v3 (no recorded one has the patches the patch-ids name)",
                                   f"patch-id {GCD_IDS[0]}")  # fmt: skip


def test_attack_without_patch_ids_two_different_series_of_one_change_id_are_ambiguous() -> None:
    real = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    forged = recorded("series 66 v3", [diff("GCD", "rm -rf ~"), GCD[1]], change_id="gcd", version=3)
    found = resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v3",)), [forged, real])
    assert found.patches == () and found.missing == ("change-id gcd:v3 (2 recorded series differ: ambiguous)",)


def test_attack_a_whitespace_twin_of_a_named_patch_makes_it_ambiguous_not_picked() -> None:
    """A stable patch-id is blind to whitespace: `rm -rf /tmp/x` and `rm -rf / tmp/x` share one."""
    real = recorded("series 6 v1", [diff("clean.sh", "rm -rf /tmp/x")])
    twin = recorded("series 66 v1", [diff("clean.sh", "rm -rf / tmp/x")])
    patch_id = stable_patch_id(diff("clean.sh", "rm -rf /tmp/x")) or ""
    assert patch_id == stable_patch_id(diff("clean.sh", "rm -rf / tmp/x"))
    found = resolve_prerequisites(Trailers(prerequisite_patch_ids=(patch_id,)), [twin, real])
    assert found.patches == () and found.missing == (f"patch-id {patch_id} (2 recorded patches differ: ambiguous)",)
    # And pinned by change-id plus patch-ids, the twin of one patch still cannot slip in.
    pinned = resolve_prerequisites(Trailers(prerequisite_change_ids=("x",), prerequisite_patch_ids=(patch_id,)),
                                   [twin, real])  # fmt: skip
    assert pinned.patches == () and pinned.missing[0] == "change-id x"


def test_attack_a_patch_carrying_a_second_diff_behind_a_commit_line_is_not_the_patch_its_first_id_names() -> None:
    # git am applies both diffs; `git patch-id` would read two patches. Matched by the first one's id, a
    # copy with an extra diff would be a "twin" of the real patch, and the newest is taken.
    smuggled = GCD[0] + "commit " + "a" * 40 + "\n" + diff("Makefile", "evil")
    real = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    twin = recorded("series 9 v3", [smuggled, GCD[1]], change_id="gcd", version=3)
    found = resolve_prerequisites(Trailers(prerequisite_patch_ids=(GCD_IDS[0],)), [twin, real])
    assert all(b"evil" not in data for _, data in found.patches)
    assert resolve_prerequisites(Trailers(prerequisite_patch_ids=(GCD_IDS[0],)), [twin]).missing == (
        f"patch-id {GCD_IDS[0]}",)  # fmt: skip
    by_change_id = resolve_prerequisites(Trailers(prerequisite_change_ids=("gcd:v3",)), [twin, real])
    assert by_change_id.patches == () and "ambiguous" in by_change_id.missing[0]


def test_attack_a_patch_carrying_a_hunk_above_its_diff_is_not_the_patch_its_id_names() -> None:
    # git am applies a traditional hunk among the diffstat too; patch-id (git's as well) reads from "diff " on.
    hunk = "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1,2 @@\n all:\n+\tevil\n\n"
    real = recorded("series 6 v3", GCD, change_id="gcd", version=3)
    twin = recorded("series 9 v3", [hunk + GCD[0], GCD[1]], change_id="gcd", version=3)
    found = resolve_prerequisites(Trailers(prerequisite_patch_ids=(GCD_IDS[0],)), [twin, real])
    assert all(b"evil" not in data for _, data in found.patches)
    assert resolve_prerequisites(Trailers(prerequisite_patch_ids=(GCD_IDS[0],)), [twin]).patches == ()
