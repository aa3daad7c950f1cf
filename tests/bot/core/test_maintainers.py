"""MAINTAINERS: sections, F:/X:/N: as the kernel documents them, and a hostile file's bounded cost."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tarfile
import time
from functools import cache
from pathlib import Path

import pytest

from bot.core.maintainers import MAX_MAINTAINERS_BYTES, MAX_REGEXES, Maintainers, address_of, parse_maintainers
from tests.requirements import missing
from workers.errors import UserError

# Our own sample, written to the format the top of linux/MAINTAINERS describes: prose first (its
# indented "F:" examples are no section), then sections, each a name line and tag lines.
SAMPLE = """\
List of maintainers
===================

Descriptions of section entries:

\tF: *Files* and directories wildcard patterns.
\t   F:\tdrivers/net/\tall files in and below drivers/net

Maintainers List
----------------

MATHX LIBRARY
M:	Alice Example <Alice@Example.org>
R:	"Reviewer, Rita" <rita@example.org>
L:	hello-devel@example.org
S:	Maintained
F:	include/mathx.h
F:	src/mathx*.c
K:	\\bmathx_\\w+

NETWORKING
M:	Net Maint <net@example.org>
S:	Supported
F:	net/
F:	include/net/*
X:	net/ipv6/
X:	net/core/skbuff.c

NETWORKING [IPv6]
M:	Six Maint <six@example.org>
F:	net/ipv6/

TEGRA
M:	Tegra Maint <tegra@example.org>
N:	[^a-z]tegra

ANY TOP-LEVEL NET DIRECTORY
M:	any-net@example.org
F:	*/net/*

BOARD FILES
M:	Board Maint <board@example.org>
F:	arch/*/boot/dts/
F:	drivers/*/pm8???-*
F:	drivers/edac/altera_edac.[ch]

ORPHANED THING
S:	Orphan
F:	tools/orphan/

DOCS
M:	Doc Maint <docs@example.org>
F:	Documentation

THE REST
M:	Linus <torvalds@example.org>
F:	*
F:	*/
"""

EVERYONE_ELSE = {"torvalds@example.org"}


def sample() -> Maintainers:
    return parse_maintainers(SAMPLE)


def test_sections_keep_their_entries() -> None:
    parsed = sample()
    assert parsed.problems == ()
    assert [section.name for section in parsed.sections][:2] == ["MATHX LIBRARY", "NETWORKING"]
    mathx = parsed.sections[0]
    assert mathx.maintainers == ("Alice Example <Alice@Example.org>",)
    assert mathx.reviewers == ('"Reviewer, Rita" <rita@example.org>',)
    assert (mathx.lists, mathx.status, mathx.files) == (("hello-devel@example.org",), "Maintained",
                                                        ("include/mathx.h", "src/mathx*.c"))  # fmt: skip
    assert mathx.keywords == ("\\bmathx_\\w+",) and mathx.addresses == {"alice@example.org", "rita@example.org"}
    assert parsed.sections[1].excluded == ("net/ipv6/", "net/core/skbuff.c")
    assert parsed.sections[3].regexes == ("[^a-z]tegra",)
    assert "F: *Files*" not in {section.name for section in parsed.sections}  # the indented prose is no section


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("include/mathx.h", {"alice@example.org", "rita@example.org"}),
        ("src/mathx.c", {"alice@example.org", "rita@example.org"}),
        ("src/mathx_more.c", {"alice@example.org", "rita@example.org"}),
        ("src/mathx/deeper.c", set()),  # "*" stays within one segment
        ("include/mathx.h.orig", set()),  # a pattern is the whole path (get_maintainer would take it)
        ("net/ipv4/tcp.c", {"net@example.org"}),  # the trailing "/": all below
        ("net/ipv6/route.c", {"six@example.org"}),  # X: shuts NETWORKING out, its own section stays
        ("net/core/skbuff.c", set()),  # X: a single file
        ("net/core/dev.c", {"net@example.org"}),
        ("include/net/sock.h", {"net@example.org", "any-net@example.org"}),  # */net/* too
        ("include/net/deeper/x.h", set()),  # neither include/net/* nor */net/* reaches below
        ("drivers/gpu/tegra/dc.c", {"tegra@example.org"}),  # N: searched anywhere in the path
        ("drivers/integrator/x.c", set()),  # [^a-z]tegra: not "integrator"
        ("arch/arm/boot/dts/board.dts", {"board@example.org"}),
        ("arch/arm64/boot/dts/vendor/board.dts", {"board@example.org"}),
        ("drivers/mfd/pm8921-core.c", {"board@example.org"}),
        ("drivers/mfd/pm89-core.c", set()),  # "???" is exactly three characters
        ("drivers/edac/altera_edac.c", {"board@example.org"}),
        ("drivers/edac/altera_edac.o", set()),
        ("tools/orphan/x.c", set()),  # a section with no M:/R: gives nobody
        ("Documentation/process/howto.rst", {"docs@example.org"}),  # a plain directory name covers below
        ("Documentation.txt", set()),
        ("Makefile", set()),
    ],
)
def test_who_maintains_a_path(path: str, expected: set[str]) -> None:
    assert sample().maintainers_for([path]) == expected | EVERYONE_ELSE


def test_several_paths_give_the_union() -> None:
    assert sample().maintainers_for(["include/mathx.h", "net/ipv6/route.c"]) == {
        "alice@example.org", "rita@example.org", "six@example.org", *EVERYONE_ELSE}  # fmt: skip
    assert sample().maintainers_for([]) == set()


def test_unusable_paths_match_nothing() -> None:
    assert sample().maintainers_for(["", "net/" + "a" * 5000]) == set()


@pytest.mark.parametrize(
    ("entry", "address"),
    [("Alice <Alice@Example.ORG>", "alice@example.org"), ("plain@example.org", "plain@example.org"),
     ('"Last, First" <lf@example.org>', "lf@example.org"), ("Orphan", None), ("Name <no-address>", None)],
)  # fmt: skip
def test_addresses_of_entries(entry: str, address: str | None) -> None:
    assert address_of(entry) == address


# --- a hostile MAINTAINERS: it is read at the base, and the base may be a fork's branch


CATASTROPHIC = ["(a+)+$", "(a|aa)+$", "(a*)*b", "(x+x+)+y", "a*" * 60 + "b", "(.*a){20}"]


@pytest.mark.parametrize("regex", CATASTROPHIC)
def test_catastrophic_n_regexes_run_in_linear_time(regex: str) -> None:
    parsed = parse_maintainers(f"EVIL\nM:\tevil@example.net\nN:\t{regex}\n")
    assert parsed.problems == ()
    started = time.perf_counter()
    assert parsed.maintainers_for(["a" * 4000 + "!"]) <= {"evil@example.net"}
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    ("regex", "why"),
    [("(?=lookahead)", "only (?: ) groups"), ("(a)\\1", "escape \\1"), ("\\bword", "escape \\b"),
     ("a{1000}", "over the cap"), ("(" * 40 + "a" + ")" * 40, "nested deeper"), ("x" * 300, "over the cap"),
     ("(unclosed", "never closes"), ("[unclosed", "never closes"), ("a**", "nothing to repeat"),
     ("(x{100}){100}", "more than 2048")],
)  # fmt: skip
def test_regexes_outside_the_subset_are_left_out_by_line(regex: str, why: str) -> None:
    text = f"EVIL\nM:\tevil@example.net\nN:\t{regex}\nF:\tevil/\n"
    parsed = parse_maintainers(text, origin="base:MAINTAINERS")
    assert len(parsed.problems) == 1 and parsed.problems[0].startswith("base:MAINTAINERS:3: N: ")
    assert why in parsed.problems[0]
    assert parsed.maintainers_for(["evil/x"]) == {"evil@example.net"}  # the rest of the section still counts


def test_hostile_globs_run_in_linear_time() -> None:
    pattern = "*a" * 100 + "/"  # as a Python regex, get_maintainer's ".*a.*a...": polynomial of degree 100
    parsed = parse_maintainers(f"EVIL\nM:\tevil@example.net\nF:\t{pattern}\nX:\t{'*?' * 100}b\n")
    started = time.perf_counter()
    assert parsed.maintainers_for(["a" * 3000 + "b", "b/" * 1500, "a/" * 99 + "b"]) == set()
    assert parsed.maintainers_for(["a/" * 100]) == {"evil@example.net"}
    assert time.perf_counter() - started < 2


def test_a_huge_file_is_refused_and_a_large_one_is_bounded() -> None:
    with pytest.raises(UserError, match=r"MAINTAINERS: \d+ bytes is over the 8388608 byte cap"):
        parse_maintainers("x" * (MAX_MAINTAINERS_BYTES + 1))
    # 20,000 sections, each with a regex and globs that are nearly all wildcards (1.5 MB).
    section = "S{n}\nM:\tm{n}@example.net\nN:\t(a|b)*c{n}\nF:\t*/*/*{n}*/\nX:\t[a-z]*?{n}\n"
    text = "".join(section.format(n=n) for n in range(20_000))
    started = time.perf_counter()
    parsed = parse_maintainers(text)
    assert len(parsed.sections) == 20_000
    assert len(parsed.problems) == 20_000 - MAX_REGEXES
    assert (
        parsed.problems[0]
        == f"MAINTAINERS:10003: N: '(a|b)*c2000' left out: more than {MAX_REGEXES} N: regexes in the file"
    )
    assert parsed.maintainers_for(["drivers/net/ethernet/intel/igb/igb_main.c"]) == set()
    e1000 = "drivers/net/ethernet/intel/e1000/e1000_main.c"  # "*/*/*{n}*/" for each n its digits hold
    assert parsed.maintainers_for([e1000]) == {f"m{n}@example.net" for n in (0, 1, 10, 100, 1000)}
    assert time.perf_counter() - started < 10


def test_lines_without_a_section_and_odd_lines_are_no_section() -> None:
    parsed = parse_maintainers("M:\torphan@example.net\nF:\t*\n\n  INDENTED\nF:\tx\n\nREAL\r\nM:\tr@example.org\r\n")
    assert [section.name for section in parsed.sections] == ["REAL"]
    assert parsed.maintainers_for(["x"]) == set()


# --- the kernel's own file


@cache
def kernel_maintainers_text() -> str | None:
    """MAINTAINERS from the Debian linux-source tarball, read as a stream up to that member (a second or two)."""
    for tarball in sorted(Path("/usr/src").glob("linux-source-*.tar.xz")):
        try:
            with tarfile.open(tarball, "r|xz") as archive:
                for member in archive:
                    if member.name.count("/") == 1 and member.name.endswith("/MAINTAINERS"):
                        handle = archive.extractfile(member)
                        return handle.read().decode("utf-8") if handle else None
        except (OSError, tarfile.TarError, lzma.LZMAError):
            continue
    return None


def kernel() -> Maintainers:
    text = kernel_maintainers_text()
    if text is None:
        missing("no /usr/src/linux-source-*.tar.xz to read MAINTAINERS from (apt-get install linux-source-6.1; "
                "scripts/setup.sh installs it)")  # fmt: skip
    return parse_maintainers(text, origin="linux/MAINTAINERS")


def test_the_kernels_file_parses_whole() -> None:
    parsed = kernel()
    assert parsed.problems == ()  # every F:, X: and N: of it is in the accepted subset
    assert len(parsed.sections) > 2000 and parsed.sections[-1].name == "THE REST"
    assert parsed.sections[-1].files == ("*", "*/")
    assert sum(bool(section.regexes) for section in parsed.sections) > 20
    assert sum(bool(section.excluded) for section in parsed.sections) > 10


@pytest.mark.parametrize(
    ("path", "some_of_them"),
    [
        ("kernel/bpf/verifier.c", {"ast@kernel.org", "daniel@iogearbox.net", "andrii@kernel.org"}),
        ("drivers/gpu/drm/tegra/dc.c", {"thierry.reding@gmail.com", "jonathanh@nvidia.com"}),  # F:, and N: tegra
        ("net/ipv4/tcp.c", {"davem@davemloft.net", "edumazet@google.com"}),
        ("drivers/net/ethernet/3com/typhoon.c", {"dave@thedillows.org"}),  # F: typhoon*
    ],
)
def test_the_kernels_file_names_its_maintainers(path: str, some_of_them: set[str]) -> None:
    parsed = kernel()
    started = time.perf_counter()
    found = parsed.maintainers_for([path])
    assert time.perf_counter() - started < 1
    assert some_of_them <= found and "torvalds@linux-foundation.org" in found  # THE REST covers everything


def test_the_kernels_exclusions_hold() -> None:
    parsed = kernel()
    arm = next(section for section in parsed.sections if section.name == "ARM PORT")
    assert "arch/arm/boot/dts/" in arm.excluded and "arch/arm/" in arm.files
    assert "ARM PORT" in {section.name for section in parsed.sections_for(["arch/arm/kernel/setup.c"])}
    assert "ARM PORT" not in {section.name for section in parsed.sections_for(["arch/arm/boot/dts/omap4.dtsi"])}


# Paths where the sections differ in kind: F: plain, wildcard and directory, X:, N:, and THE REST alone.
COMPARED_PATHS = [
    "kernel/bpf/verifier.c", "drivers/gpu/drm/tegra/dc.c", "net/bluetooth/hci_core.c", "net/ipv4/tcp.c",
    "drivers/net/ethernet/3com/typhoon.c", "arch/arm/boot/dts/omap4.dtsi", "arch/arm/kernel/setup.c",
    "arch/arm/mach-omap2/board-generic.c", "include/uapi/linux/bpf.h", "arch/x86/include/uapi/asm/kvm.h",
    "drivers/iio/light/adjd_s311.c", "Documentation/devicetree/bindings/input/da9062-onkey.txt",
    "drivers/mfd/pm8921-core.c", "drivers/edac/altera_edac.c", "drivers/soc/qcom/smem.c",
    "arch/arm64/boot/dts/qcom/sm8250.dtsi", "drivers/pinctrl/bcm/pinctrl-bcm2835.c",
    "samples/kfifo/bytestream-example.c", "README", "fs/ext4/inode.c", "drivers/clk/rockchip/clk-rk3399.c",
    "sound/soc/sunxi/sun4i-i2s.c",
]  # fmt: skip


def kernel_member(name: str) -> bytes | None:
    for tarball in sorted(Path("/usr/src").glob("linux-source-*.tar.xz")):
        with tarfile.open(tarball, "r|xz") as archive:
            for member in archive:
                if member.name.partition("/")[2] == name:
                    handle = archive.extractfile(member)
                    return handle.read() if handle else None
    return None


@pytest.mark.slow
def test_the_same_addresses_as_get_maintainer(tmp_path: Path) -> None:
    """scripts/get_maintainer.pl of the same kernel, in a tree of empty files at these paths: its M:/R: answer.

    Options: no git history, no K: keywords, no lists (ours are not claims), and the "chief penguin"
    (Linus, THE REST's M:) kept, whom get_maintainer leaves out by default.
    """
    text = kernel_maintainers_text()
    script = kernel_member("scripts/get_maintainer.pl") if text is not None and shutil.which("perl") else None
    if text is None or script is None:
        missing("needs perl and /usr/src/linux-source-*.tar.xz (MAINTAINERS and scripts/get_maintainer.pl; "
                "scripts/setup.sh installs linux-source-6.1)")  # fmt: skip
    for top in ("COPYING", "CREDITS", "Kbuild", "Makefile", "README"):
        (tmp_path / top).write_text("")
    for folder in ("Documentation", "arch", "include", "drivers", "fs", "init", "ipc", "kernel", "lib", "scripts"):
        (tmp_path / folder).mkdir()
    (tmp_path / "MAINTAINERS").write_text(text)
    (tmp_path / "scripts" / "get_maintainer.pl").write_bytes(script)
    for path in COMPARED_PATHS:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    parsed = parse_maintainers(text)
    options = ["--nogit", "--nogit-fallback", "--git-chief-penguins", "--norolestats", "--nol", "--nokeywords",
               "--noremove-duplicates"]  # fmt: skip
    for path in COMPARED_PATHS:
        run = subprocess.run(["perl", "scripts/get_maintainer.pl", *options, "-f", path], cwd=tmp_path,
                             capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
        theirs = {address_of(line) for line in run.stdout.splitlines()} - {None}
        assert parsed.maintainers_for([path]) == theirs, path


def test_a_whole_change_is_maintained_only_by_who_covers_every_path() -> None:
    assert sample().maintainers_of_every(["include/mathx.h", "net/ipv6/route.c"]) == EVERYONE_ELSE
    assert sample().maintainers_of_every(["include/mathx.h"]) == sample().maintainers_for(["include/mathx.h"])
    assert sample().maintainers_of_every([]) == set()
    assert sample().maintainers_of_every(["include/mathx.h", "net/" + "a" * 5000]) == set()
