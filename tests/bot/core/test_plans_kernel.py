"""Kernel recipes: the rendered script per arch, toolchain and targets; what they collect; their warm key;
recipes refused with file:line:key."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path
from typing import get_args

import pytest

from bot.core.plans import (
    ARCHES,
    Build,
    KernelRecipe,
    PlanError,
    build_artifacts,
    kernel_build_of,
    parse_plan,
    render_build_script,
)

HEAD = "version: 1\nbuilds:\n  - name: k\n"


def build_of(kernel: str, extra: str = "") -> Build:
    return parse_plan(f"{HEAD}    kernel: {kernel}\n{extra}", "plan.yaml").builds[0]


X86 = 'make -s O="$LABGATE_BUILD" ARCH=x86_64 CC="$LABGATE_CC gcc"'
ARM64 = 'make -s O="$LABGATE_BUILD" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CC="$LABGATE_CC aarch64-linux-gnu-gcc"'
CLANG = 'make -s O="$LABGATE_BUILD" ARCH=arm64 LLVM=1 CC="$LABGATE_CC clang"'
TAR = "--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner"
KEPT = 'if [ "${LABGATE_KCONFIG_KEPT:-}" != 1 ] || [ ! -s "$LABGATE_BUILD/.config" ]; then\n'


def config_steps(*lines: str) -> str:
    """The config steps, run unless the build worker keeps its warm .config (LABGATE_KCONFIG_KEPT)."""
    return KEPT + "".join(f"  {line}\n" for line in lines) + "fi\n"


def test_x86_64_gcc_image_with_fragments() -> None:
    build = build_of("{config: tinyconfig, fragments: [.labgate/boot.config]}")
    assert render_build_script(build) == config_steps(
        f"{X86} tinyconfig",
        '(cd "$LABGATE_BUILD" && "$LABGATE_SRC"/scripts/kconfig/merge_config.sh -m -O "$LABGATE_BUILD" '
        '"$LABGATE_BUILD/.config" "$LABGATE_SRC"/.labgate/boot.config)',
        f"{X86} olddefconfig",
        'for fragment in "$LABGATE_SRC"/.labgate/boot.config; do grep -E \'^CONFIG_[A-Za-z0-9_]+=\' "$fragment" | '
        'while read -r line; do grep -qxF "$line" "$LABGATE_BUILD/.config" || '
        '{ echo "labgate: $fragment: $line did not survive olddefconfig" >&2; exit 1; }; done; done',
    ) + f'{X86} -j"$(nproc)" bzImage\n'
    assert build_artifacts(build) == (".config", "System.map", "arch/x86/boot/bzImage")


def test_arm64_cross_gcc_with_modules_and_dtbs() -> None:
    build = build_of("{arch: arm64, config: defconfig, targets: [dtbs, modules, image]}")
    assert render_build_script(build) == config_steps(f"{ARM64} defconfig") + (
        f'{ARM64} -j"$(nproc)" Image modules dtbs\n'
        f"release=$({ARM64} kernelrelease)\n"
        'rm -rf "$LABGATE_BUILD/.labgate-modules"\n'
        f'{ARM64} INSTALL_MOD_PATH="$LABGATE_BUILD/.labgate-modules" INSTALL_MOD_STRIP=1 modules_install\n'
        'rm -f "$LABGATE_BUILD/.labgate-modules/lib/modules/$release/build" '
        '"$LABGATE_BUILD/.labgate-modules/lib/modules/$release/source"\n'
        f'tar -C "$LABGATE_BUILD/.labgate-modules" {TAR} -cf - lib/modules/"$release" '
        '| gzip -n > "$LABGATE_BUILD/modules.tar.gz"\n'
        'rm -rf "$LABGATE_BUILD/.labgate-dtbs" && mkdir -p "$LABGATE_BUILD/.labgate-dtbs/dtbs/$release"\n'
        f'{ARM64} INSTALL_DTBS_PATH="$LABGATE_BUILD/.labgate-dtbs/dtbs/$release" dtbs_install\n'
        f'tar -C "$LABGATE_BUILD/.labgate-dtbs" {TAR} -cf - dtbs/"$release" | gzip -n > "$LABGATE_BUILD/dtbs.tar.gz"\n'
    )
    assert build_artifacts(build) == (".config", "System.map", "arch/arm64/boot/Image", "modules.tar.gz",
                                      "dtbs.tar.gz")  # fmt: skip


def test_clang_uses_llvm_and_needs_no_cross_prefix_and_a_config_file_is_copied() -> None:
    build = build_of("{arch: arm64, config_file: .labgate/arm64.config, toolchain: clang, target: Image.gz}")
    assert render_build_script(build) == config_steps(
        'cp "$LABGATE_SRC"/.labgate/arm64.config "$LABGATE_BUILD/.config"', f"{CLANG} olddefconfig"
    ) + f'{CLANG} -j"$(nproc)" Image.gz\n'
    assert build_artifacts(build) == (".config", "System.map", "arch/arm64/boot/Image.gz")


@pytest.mark.parametrize(("arch", "make", "image"), [
    ("x86_64", 'ARCH=x86_64 LLVM=1 CC="$LABGATE_CC clang"', "arch/x86/boot/bzImage"),
    ("x86_64", 'ARCH=x86_64 CC="$LABGATE_CC gcc"', "arch/x86/boot/bzImage"),
    ("arm64", 'ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- CC="$LABGATE_CC aarch64-linux-gnu-gcc"',
     "arch/arm64/boot/Image"),
    ("arm64", 'ARCH=arm64 LLVM=1 CC="$LABGATE_CC clang"', "arch/arm64/boot/Image"),
])  # fmt: skip
def test_each_arch_has_its_compiler_and_image(arch: str, make: str, image: str) -> None:
    toolchain = "clang" if "LLVM" in make else "gcc"
    build = build_of(f"{{arch: {arch}, toolchain: {toolchain}}}")
    prefix = f'make -s O="$LABGATE_BUILD" {make}'
    expected = config_steps(f"{prefix} defconfig") + f'{prefix} -j"$(nproc)" {image.rsplit("/", 1)[1]}\n'
    assert render_build_script(build) == expected
    assert build_artifacts(build)[2] == image


def test_vmlinux_and_modules_only() -> None:
    assert build_artifacts(build_of("{target: vmlinux}")) == (".config", "System.map", "vmlinux")
    assert build_artifacts(build_of("{targets: [modules]}")) == (".config", "System.map", "modules.tar.gz")


def test_every_make_call_gets_the_same_compiler() -> None:
    build = build_of("{arch: arm64, fragments: [a.config], targets: [image, modules, dtbs]}")
    calls = [line for line in render_build_script(build).splitlines() if "make -s" in line]
    assert len(calls) == 6
    assert all(ARM64 in call for call in calls)


def test_listed_artifacts_add_to_the_kernels_own_once_each() -> None:
    build = build_of("{}", "    artifacts: [arch/x86/boot/bzImage, vmlinux]\n")
    assert build_artifacts(build) == (".config", "System.map", "arch/x86/boot/bzImage", "vmlinux")
    command = parse_plan(f"{HEAD}    command: make\n    artifacts: [out/*]\n").builds[0]
    assert build_artifacts(command) == ("out/*",)


def test_a_command_build_must_list_its_artifacts() -> None:
    with pytest.raises(PlanError, match=r"^plan.yaml:3: builds.0: a `command` build must list its `artifacts`\n"):
        parse_plan(f"{HEAD}    command: make\n", "plan.yaml")


@pytest.mark.parametrize(("kernel", "error"), [
    ("{config: menuconfig}", "plan.yaml:4: builds.0.kernel.config: config 'menuconfig' is not a config target"),
    ("{config: localmodconfig}", "builds.0.kernel.config: config 'localmodconfig' is not"),
    ("{config: randconfig}", "builds.0.kernel.config: config 'randconfig' is not"),
    ("{config: 'defconfig; touch /tmp/x'}", "builds.0.kernel.config: config 'defconfig; touch /tmp/x' is not"),
    ("{config: tinyconfig, config_file: a.config}",
     "plan.yaml:4: builds.0.kernel: give at most one of `config` (a make config target) or `config_file`"),
    ("{config_file: /etc/passwd}",
     "builds.0.kernel.config_file: config_file '/etc/passwd' is absolute: give a path relative to the tree's root"),
    ("{fragments: [ok.config, ../../etc/shadow]}",
     "builds.0.kernel.fragments.1: fragment '../../etc/shadow' has a '..' component"),
    ("{arch: riscv}", "builds.0.kernel.arch: Input should be 'x86_64' or 'arm64'"),
    ("{toolchain: icc}", "builds.0.kernel.toolchain: Input should be 'gcc' or 'clang'"),
    ("{targets: [image, firmware]}", "builds.0.kernel.targets.1: Input should be 'image', 'modules' or 'dtbs'"),
    ("{targets: [image, image]}", "builds.0.kernel: targets: each of image, modules, dtbs at most once"),
    ("{targets: []}", "builds.0.kernel.targets: Tuple should have at least 1 item"),
    ("{targets: [modules], target: Image}", "`target` names the image, but `targets` does not build the image"),
    ("{target: 'bzImage; id'}", "builds.0.kernel.target: String should match pattern"),
    ("{target: '..'}", "builds.0.kernel.target: String should match pattern"),
])  # fmt: skip
def test_bad_recipes_are_refused_naming_line_and_key(kernel: str, error: str) -> None:
    with pytest.raises(PlanError) as info:
        build_of(kernel)
    assert error in str(info.value)


def test_recipe_errors_point_at_the_line_of_the_key() -> None:
    text = f"{HEAD}    kernel:\n      arch: arm64\n      fragments:\n        - a.config\n        - /abs.config\n"
    with pytest.raises(PlanError, match=r"^plan.yaml:8: builds.0.kernel.fragments.1: fragment '/abs.config' is"):
        parse_plan(text, "plan.yaml")


def key(kernel: str, extra: str = "", tree: str = "linux") -> str:
    fields = kernel_build_of(build_of(kernel, extra), tree)
    assert fields is not None
    return fields["warm_key"]


def test_the_warm_key_changes_with_what_changes_the_output() -> None:
    base = key("{config: tinyconfig, fragments: [a.config]}")
    changed = [
        key("{arch: arm64, config: tinyconfig, fragments: [a.config]}"),
        key("{config: defconfig, fragments: [a.config]}"),
        key("{config_file: tinyconfig, fragments: [a.config]}"),
        key("{config: tinyconfig, fragments: [b.config]}"),
        key("{config: tinyconfig, fragments: [a.config, b.config]}"),
        key("{config: tinyconfig}"),
        key("{config: tinyconfig, fragments: [a.config], toolchain: clang}"),
        key("{config: tinyconfig, fragments: [a.config], targets: [image, modules]}"),
        key("{config: tinyconfig, fragments: [a.config], target: vmlinux}"),
        key("{config: tinyconfig, fragments: [a.config]}", tree="other"),
    ]
    assert len({base, *changed}) == len(changed) + 1
    assert key("{config: tinyconfig, fragments: [a.config, b.config]}") != key(
        "{config: tinyconfig, fragments: [b.config, a.config]}"
    )


def test_the_warm_key_stays_for_what_does_not_change_the_output() -> None:
    base = key("{config: tinyconfig, targets: [image, modules]}")
    assert key("{config: tinyconfig, targets: [modules, image]}") == base
    assert key("{config: tinyconfig, targets: [image, modules], target: bzImage, toolchain: gcc}") == base
    assert key("{config: tinyconfig, targets: [image, modules]}", "    timeout: 30\n    artifacts: [x]\n") == base
    assert key("{}") == key("{config: defconfig}")
    assert command_fields() is None


def command_fields() -> dict[str, str] | None:
    return kernel_build_of(parse_plan(f"{HEAD}    command: make\n    artifacts: [x]\n").builds[0], "linux")


FAKE_MAKE = """#!/bin/sh
# Stands in for the kernel's make: logs its arguments, installs two modules and a dtb where asked.
printf '%s\\n' "$*" >> "$LOG"
for arg; do
  case "$arg" in
    INSTALL_MOD_PATH=*) mods="${arg#INSTALL_MOD_PATH=}/lib/modules/6.1.0" ;;
    INSTALL_DTBS_PATH=*) dtbs="${arg#INSTALL_DTBS_PATH=}" ;;
    kernelrelease) echo 6.1.0 ;;
  esac
done
if [ -n "$mods" ]; then
  mkdir -p "$mods/kernel/fs" && echo ko > "$mods/kernel/fs/b.ko" && echo ko > "$mods/kernel/a.ko"
  echo dep > "$mods/modules.dep" && ln -sfn /home/builder/linux "$mods/build" && ln -sfn /src "$mods/source"
fi
if [ -n "$dtbs" ]; then mkdir -p "$dtbs/vendor" && echo dtb > "$dtbs/vendor/board.dtb"; fi
"""


def run_script(script: str, tmp_path: Path, name: str, files: dict[str, str] | None = None) -> Path:
    """Runs a rendered script as the build worker does (`sh -ec`), with the kernel's make replaced."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    src, build = tmp_path / name / "src", tmp_path / name / "build"
    src.mkdir(parents=True)
    build.mkdir()
    for path, text in (files or {}).items():
        (src / path).write_text(text)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LABGATE_SRC": str(src), "LABGATE_BUILD": str(build),
           "LABGATE_CC": "/usr/lib/labgate/cc", "LOG": str(tmp_path / name / "make.log")}  # fmt: skip
    subprocess.run(["sh", "-ec", script], cwd=src, env=env, check=True, timeout=60)
    return build


def test_module_and_dtb_tarballs_are_reproducible_and_hold_no_host_links(tmp_path: Path) -> None:
    script = render_build_script(build_of("{arch: arm64, targets: [image, modules, dtbs]}"))
    first = run_script(script, tmp_path, "one")
    os.utime(tmp_path / "one" / "make.log", (1, 1))
    second = run_script(script, tmp_path, "two")  # other times, other absolute paths
    for tarball in ("modules.tar.gz", "dtbs.tar.gz"):
        assert (first / tarball).read_bytes() == (second / tarball).read_bytes()
    with tarfile.open(first / "modules.tar.gz") as archive:
        members = archive.getmembers()
    release = "lib/modules/6.1.0"
    assert [m.name for m in members] == [release, f"{release}/kernel", f"{release}/kernel/a.ko", f"{release}/kernel/fs",
                                         f"{release}/kernel/fs/b.ko", f"{release}/modules.dep"]  # fmt: skip
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 and not m.issym() for m in members)
    assert (first / "dtbs.tar.gz").read_bytes()[4:8] == bytes(4)  # gzip -n: no time in the header
    with tarfile.open(first / "dtbs.tar.gz") as archive:
        assert archive.getnames() == ["dtbs/6.1.0", "dtbs/6.1.0/vendor", "dtbs/6.1.0/vendor/board.dtb"]
    calls = (tmp_path / "one" / "make.log").read_text().splitlines()
    assert all(call.startswith(f"-s O={first} ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- "
                               "CC=/usr/lib/labgate/cc aarch64-linux-gnu-gcc") for call in calls)  # fmt: skip


def test_hostile_file_names_in_a_recipe_stay_file_names(tmp_path: Path) -> None:
    # A plan may come from a fork: its file names must reach cp and merge_config.sh as words, never as shell.
    name = "x$(touch pwned)`touch pwned2`;touch pwned3 'q.config"
    script = render_build_script(build_of(f'{{config_file: "{name}"}}'))
    build = run_script(script, tmp_path, "one", {name: "CONFIG_X=y\n"})
    assert (build / ".config").read_text() == "CONFIG_X=y\n"
    assert not list(tmp_path.rglob("pwned*"))


def test_every_arch_a_plan_may_name_has_its_build_facts() -> None:
    assert set(get_args(KernelRecipe.model_fields["arch"].annotation)) == set(ARCHES)


TESTS = """tests:
  - name: boot
    build: k
    device: {arch: arm64}
    kernel: arch/x86/boot/bzImage
    modules: modules.tar.gz
    commands: [{name: c, run: "true"}]
"""


def test_a_test_asking_for_what_its_kernel_build_does_not_collect_is_refused() -> None:
    with pytest.raises(PlanError) as info:
        parse_plan(f"{HEAD}    kernel: {{arch: arm64}}\n{TESTS}", "plan.yaml")
    assert str(info.value).splitlines() == [
        "plan.yaml:9: tests.0.kernel: build k collects no 'arch/x86/boot/bzImage' (it collects .config, System.map, "
        "arch/arm64/boot/Image)",
        "plan.yaml:10: tests.0.modules: build k collects no 'modules.tar.gz' (it collects .config, System.map, "
        "arch/arm64/boot/Image)",
    ]
    fixed = TESTS.replace("arch/x86/boot/bzImage", "arch/arm64/boot/Image")
    parse_plan(f"{HEAD}    kernel: {{arch: arm64, targets: [image, modules]}}\n{fixed}")
    # What a plan lists is collected too, globs and all; a command build's artifacts are its command's.
    parse_plan(f"{HEAD}    kernel: {{arch: arm64}}\n    artifacts: ['arch/*/boot/*', '*.tar.gz']\n{TESTS}")
    parse_plan(f"{HEAD}    command: make\n    artifacts: [out]\n{TESTS}")
    with pytest.raises(PlanError, match=r"plan.yaml:11: tests.0.modules: modules '/lib/modules' is absolute"):
        parse_plan(f"{HEAD}    command: make\n    artifacts: [out]\n{TESTS.replace('modules.tar.gz', '/lib/modules')}",
                   "plan.yaml")  # fmt: skip
