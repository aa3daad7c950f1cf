"""In-tree plan (`.labgate/plan.yaml`) v1: parsing with file:line:key errors, job selection."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.core.linear_match import PatternError
from bot.core.maintainers import parse_maintainers
from bot.core.path_globs import first_match, glob_problem
from bot.core.schema import json_schema, render_json_schema
from workers.errors import UserError
from workers.spec import _refusing, unsafe_path_reason

NAME = r"^[a-z0-9][a-z0-9._-]*$"
PLAN_PATH = ".labgate/plan.yaml"
MAX_PLAN_CHARS = 256 * 1024  # a plan is read by the control plane, before any trust is decided
MAX_SELECTORS = 1000  # paths globs, areas and documentation globs of a whole plan


class PlanError(UserError):
    """The plan is missing or invalid; the message names the file, line and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ArchInfo:
    """What the kernel's build needs to know of an ARCH: its arch/ directory, default image and compiler."""

    srcarch: str  # the directory under arch/
    image: str  # the make target of the bootable image, under arch/<srcarch>/boot/
    # Debian's cross toolchain prefix on an x86_64 build host ("" builds natively): the build workers are
    # x86_64, and clang needs none (scripts/Makefile.clang derives --target from ARCH).
    cross_compile: str


ARCHES: dict[str, ArchInfo] = {
    "x86_64": ArchInfo("x86", "bzImage", ""),
    "arm64": ArchInfo("arm64", "Image", "aarch64-linux-gnu-"),
}  # another arch is a line here (and in KernelRecipe.arch) once the lab has its cross toolchain
# Config targets that need no terminal and read nothing of the build host (localmodconfig reads its lsmod),
# and give the same .config for the same tree (randconfig does not).
CONFIG_TARGETS = ("defconfig", "tinyconfig", "allnoconfig", "allyesconfig", "allmodconfig", "alldefconfig")
_BOARD_DEFCONFIG = re.compile(r"[a-z0-9][a-z0-9_.-]*_defconfig")
# Tarballs a kernel build leaves at the top of $LABGATE_BUILD, by target.
TARBALLS = {"modules": "modules.tar.gz", "dtbs": "dtbs.tar.gz"}


def _config_target(value: str) -> str:
    if value not in CONFIG_TARGETS and not _BOARD_DEFCONFIG.fullmatch(value):
        raise ValueError(
            f"config {value!r} is not a config target labgate runs: give one of {', '.join(CONFIG_TARGETS)} "
            "or a board's NAME_defconfig (or `config_file` for a .config in the tree)"
        )
    return value


_IN_TREE = "give a path relative to the tree's root"


def _relative_path(what: str, hint: str) -> AfterValidator:
    """Refuses a path that could leave the directory it is relative to, saying which value and why."""

    def reason_of(value: str) -> str | None:
        reason = unsafe_path_reason(value)
        return f"{value!r} {reason}: {hint}" if reason else None

    return _refusing(reason_of, what)


class KernelRecipe(_Strict):
    """A Linux kernel build: a config (a make target or a file of the tree), fragments merged in order,
    a toolchain, and the targets to build. Its script is render_build_script's."""

    arch: Literal["x86_64", "arm64"] = "x86_64"
    # At most one of these two; neither is `defconfig`.
    config: Annotated[str, AfterValidator(_config_target)] | None = None
    config_file: Annotated[str, _relative_path("config_file", _IN_TREE)] | None = None
    fragments: tuple[Annotated[str, _relative_path("fragment", _IN_TREE)], ...] = ()
    toolchain: Literal["gcc", "clang"] = "gcc"
    targets: tuple[Literal["image", "modules", "dtbs"], ...] = Field(("image",), min_length=1)
    # The image's make target; unset: the arch's own (bzImage on x86_64, Image on arm64).
    target: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

    @model_validator(mode="after")
    def _coherent(self) -> KernelRecipe:
        if self.config is not None and self.config_file is not None:
            raise ValueError("give at most one of `config` (a make config target) or `config_file` (a file)")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("targets: each of image, modules, dtbs at most once")
        if self.target is not None and "image" not in self.targets:
            raise ValueError("`target` names the image, but `targets` does not build the image")
        return self

    @property
    def image_target(self) -> str:
        return self.target or ARCHES[self.arch].image

    @property
    def image_path(self) -> str:
        """Where the image lands, relative to the build dir."""
        if self.image_target == "vmlinux":
            return "vmlinux"
        return f"arch/{ARCHES[self.arch].srcarch}/boot/{self.image_target}"

    @property
    def make_targets(self) -> tuple[str, ...]:
        """The build's make goals, in a fixed order whatever the plan's order."""
        goals = {"image": self.image_target, "modules": "modules", "dtbs": "dtbs"}
        return tuple(goals[t] for t in ("image", "modules", "dtbs") if t in self.targets)


class StaticChecks(_Strict):
    """The static stage, run before any build (workers/static.py); every check reads the base's tools."""

    checkpatch: Literal["off", "on", "strict"] = "on"
    diff_check: bool = True
    kernel_doc: bool = True
    sparse: bool = False  # sparse (C=1) on the changed C files


def _kernel_name(name: str) -> str:
    reason = None if name == "debian" else unsafe_path_reason(name)
    if reason:
        raise ValueError(f"kernel {name!r} {reason}: give 'debian' or an artifact path of the build")
    return name


class Build(_Strict):
    name: str = Field(pattern=NAME)
    command: str | None = None
    kernel: KernelRecipe | None = None
    # A kernel build collects its image, .config, System.map and target tarballs without being asked
    # (build_artifacts); a command build names every artifact it leaves.
    artifacts: tuple[
        Annotated[str, _relative_path("artifact pattern", "patterns are relative to $LABGATE_BUILD")], ...
    ] = ()
    timeout: int = Field(600, gt=0)

    @model_validator(mode="after")
    def _one_recipe(self) -> Build:
        if (self.command is None) == (self.kernel is None):
            raise ValueError("give exactly one of `command` or `kernel`")
        if self.command is not None and not self.artifacts:
            raise ValueError("a `command` build must list its `artifacts`")
        return self


def _glob(value: str) -> str:
    problem = glob_problem(value)
    if problem:
        raise ValueError(f"glob {value!r} {problem}")
    return value


Glob = Annotated[str, AfterValidator(_glob)]
# A MAINTAINERS section's name as written on its name line ("PRINTK", "ARM64 PORT (AARCH64 ARCHITECTURE)").
AreaName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S[^\n\r]*$")]


class Command(_Strict):
    name: str = Field(pattern=NAME)
    run: str = Field(min_length=1)
    # Root on the DUT can write the runner's port: such results are marked not forge-proof.
    root: bool = False


class Test(_Strict):
    __test__ = False
    name: str = Field(pattern=NAME)
    build: str
    device: dict[str, str] = Field(min_length=1)
    kernel: Annotated[str, AfterValidator(_kernel_name)] = "debian"
    commands: tuple[Command, ...] = Field(min_length=1)
    timeout: int = Field(120, gt=0)
    # Run only for a change touching one of these (bot/core/path_globs.py), or a file of one of these
    # MAINTAINERS sections (its F:/X:/N: lines); neither: for every change.
    paths: tuple[Glob, ...] = ()
    areas: tuple[AreaName, ...] = ()
    kunit: bool = False  # relay the kernel's built-in KUnit results (debugfs) as tests
    # An artifact of the build (modules tarball) unpacked into the initramfs.
    modules: Annotated[str, _relative_path("modules", "give an artifact path of the build")] | None = None
    # Asks the lab answers, never lifts: a device class with less memory does not match; a network is
    # given only where the device class allows it and the tree grants it to the change's tier.
    memory_mb: int | None = Field(None, gt=0, description="least memory (MB) of the device; unset: any")
    network: bool = Field(False, description="ask for a network on the DUT; off unless the lab grants it")


class Plan(_Strict):
    version: int = Field(ge=1, le=1)
    builds: tuple[Build, ...] = Field(min_length=1)
    tests: tuple[Test, ...] = ()
    # None: the static stage runs with StaticChecks' defaults when the base has scripts/checkpatch.pl (a
    # kernel-style tree), and not at all otherwise; a plan that says `static:` always gets it.
    static: StaticChecks | None = None
    # A change whose every file matches one of these needs no build: it gets the static stage only.
    documentation: tuple[Glob, ...] = ("Documentation/**",)


def _reference_problems(plan: Plan) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-references pydantic cannot see: unique names, tests naming real builds."""
    problems: list[tuple[tuple[Any, ...], str]] = []

    def unique(loc: tuple[Any, ...], names: list[str]) -> None:
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                problems.append(((*loc, index, "name"), f"name {name!r} is used twice"))
            seen.add(name)

    unique(("builds",), [b.name for b in plan.builds])
    unique(("tests",), [t.name for t in plan.tests])
    builds = {b.name: b for b in plan.builds}
    for index, test in enumerate(plan.tests):
        if test.build not in builds:
            problems.append((("tests", index, "build"), f"no build named {test.build!r} in the plan"))
        else:
            problems += [(("tests", index, key), why) for key, why in _uncollected(test, builds[test.build])]
        unique(("tests", index, "commands"), [c.name for c in test.commands])
    # Selection matches every glob against every changed file, in the control plane: bound the product.
    globs = len(plan.documentation) + sum(len(test.paths) + len(test.areas) for test in plan.tests)
    if globs > MAX_SELECTORS:
        where = ("tests",) if plan.tests else ("documentation",)
        problems.append((where, f"the plan has {globs} paths, areas and documentation globs, over the cap of "
                                f"{MAX_SELECTORS}"))  # fmt: skip
    return problems


def _uncollected(test: Test, build: Build) -> list[tuple[str, str]]:
    """A test's kernel or modules that its kernel build will not collect: said now, not after a build."""
    if build.kernel is None:  # a command build's artifacts are whatever its command leaves
        return []
    collected = build_artifacts(build)
    wanted = [("kernel", test.kernel)] if test.kernel != "debian" else []
    wanted += [("modules", test.modules)] if test.modules is not None else []
    return [(key, f"build {build.name} collects no {path!r} (it collects {', '.join(collected)})")
            for key, path in wanted if not _collects(collected, path)]  # fmt: skip


def _collects(patterns: Sequence[str], path: str) -> bool:
    try:
        return first_match(patterns, path) is not None
    except PatternError:  # an artifact pattern too odd to read here: the build will tell
        return True


class _Unreadable(Exception):
    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line = line


def _construct(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """Turn a YAML node into Python, remembering the line of every key path."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Unreadable(key_node.start_mark.line + 1, "a mapping key must be a plain word")
            key = yaml.safe_load(yaml.serialize(key_node))
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _construct(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _line_for(loc: Sequence[Any], lines: dict[tuple[Any, ...], int]) -> int:
    path: tuple[Any, ...] = tuple(loc)
    while path and path not in lines:
        path = path[:-1]
    return lines.get(path, 1)


def _refuse_anchors(text: str, source: str) -> None:
    """Anchors and aliases let a few lines expand to gigabytes (a "billion laughs" plan); no plan needs them."""
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, yaml.AnchorToken | yaml.AliasToken):
            line = token.start_mark.line + 1
            raise PlanError(f"{source}:{line}: YAML anchors and aliases are not accepted in a plan")


def parse_plan(text: str | None, source: str = PLAN_PATH) -> Plan:
    """Parse plan text; PlanError says `source:line: key.path: reason` for each problem."""
    if text is None:
        raise PlanError(f"{source}: no plan: the tree has no file at this path")
    if len(text) > MAX_PLAN_CHARS:
        raise PlanError(f"{source}: the plan is {len(text)} characters, over the cap of {MAX_PLAN_CHARS}")
    try:
        _refuse_anchors(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PlanError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError as exc:
        raise PlanError(f"{source}: nested too deeply to be a plan") from exc
    if node is None:
        raise PlanError(f"{source}: the plan is empty")
    lines: dict[tuple[Any, ...], int] = {}
    try:
        raw = _construct(node, (), lines)
    except _Unreadable as exc:
        raise PlanError(f"{source}:{exc.line}: {exc}") from exc
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:  # unknown tags, bad timestamps...
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise PlanError(f"{where}: cannot read the plan: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(raw, dict):
        raise PlanError(f"{source}:1: (top level): expected a mapping")
    problems: list[str] = []
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        for item in exc.errors():
            # Validators of a whole model put their own loc; drop pydantic's union tags.
            loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
            key = ".".join(str(p) for p in loc) or "(top level)"
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{_line_for(loc, lines)}: {key}: {message}")
        raise PlanError("\n".join(problems)) from exc
    for ref_loc, reason in _reference_problems(plan):
        key = ".".join(str(p) for p in ref_loc)
        problems.append(f"{source}:{_line_for(ref_loc, lines)}: {key}: {reason}")
    if problems:
        raise PlanError("\n".join(problems))
    return plan


def render_build_script(build: Build) -> str:
    """The shell script a build job runs at the worktree root (`sh -ec`)."""
    if build.command is not None:
        return build.command
    recipe = build.kernel
    assert recipe is not None
    # Every make call gets the same variables: a CC that changed between calls would rebuild everything,
    # and Kconfig reads the compiler (CC_IS_GCC, CC_VERSION_TEXT) when it writes .config.
    make = f'make -s O="$LABGATE_BUILD" {" ".join(_make_variables(recipe))}'
    if recipe.config_file is not None:
        steps = [f'cp "$LABGATE_SRC"/{shlex.quote(recipe.config_file)} "$LABGATE_BUILD/.config"',
                 f"{make} olddefconfig"]  # fmt: skip
    else:
        steps = [f"{make} {recipe.config or 'defconfig'}"]
    if recipe.fragments:
        fragments = " ".join(f'"$LABGATE_SRC"/{shlex.quote(f)}' for f in recipe.fragments)
        # merge_config.sh leaves temp files in its cwd: run it in the build dir, not the tree.
        steps.append(
            f'(cd "$LABGATE_BUILD" && "$LABGATE_SRC"/scripts/kconfig/merge_config.sh -m -O "$LABGATE_BUILD" '
            f'"$LABGATE_BUILD/.config" {fragments})'
        )
        steps.append(f"{make} olddefconfig")
        # An option whose dependencies are unmet is dropped silently: say which, and stop.
        steps.append(
            f"for fragment in {fragments}; do grep -E '^CONFIG_[A-Za-z0-9_]+=' \"$fragment\" | while read -r line; do "
            'grep -qxF "$line" "$LABGATE_BUILD/.config" || '
            '{ echo "labgate: $fragment: $line did not survive olddefconfig" >&2; exit 1; }; done; done'
        )
    # The build worker sets LABGATE_KCONFIG_KEPT=1 when its warm build dir's .config came from this recipe and
    # nothing that makes a .config (Kconfig files, defconfigs, fragments, scripts/kconfig) changed since: the
    # config steps would write the same .config again (no unit rebuilds either way), at ~9 s of a warm build.
    steps = ['if [ "${LABGATE_KCONFIG_KEPT:-}" != 1 ] || [ ! -s "$LABGATE_BUILD/.config" ]; then',
             *(f"  {step}" for step in steps), "fi"]  # fmt: skip
    steps.append(f'{make} -j"$(nproc)" {" ".join(shlex.quote(t) for t in recipe.make_targets)}')
    if "modules" in recipe.targets or "dtbs" in recipe.targets:
        steps.append(f"release=$({make} kernelrelease)")
    if "modules" in recipe.targets:
        # Stripped: the tarball goes into an initramfs. The build and source links name build-host paths.
        steps += [
            'rm -rf "$LABGATE_BUILD/.labgate-modules"',
            f'{make} INSTALL_MOD_PATH="$LABGATE_BUILD/.labgate-modules" INSTALL_MOD_STRIP=1 modules_install',
            'rm -f "$LABGATE_BUILD/.labgate-modules/lib/modules/$release/build" '
            '"$LABGATE_BUILD/.labgate-modules/lib/modules/$release/source"',
            _reproducible_tar('"$LABGATE_BUILD/.labgate-modules"', 'lib/modules/"$release"', TARBALLS["modules"]),
        ]
    if "dtbs" in recipe.targets:
        steps += [
            # A config without device trees installs none: the tarball is then empty, not missing.
            'rm -rf "$LABGATE_BUILD/.labgate-dtbs" && mkdir -p "$LABGATE_BUILD/.labgate-dtbs/dtbs/$release"',
            f'{make} INSTALL_DTBS_PATH="$LABGATE_BUILD/.labgate-dtbs/dtbs/$release" dtbs_install',
            _reproducible_tar('"$LABGATE_BUILD/.labgate-dtbs"', 'dtbs/"$release"', TARBALLS["dtbs"]),
        ]
    return "\n".join(steps) + "\n"


def _make_variables(recipe: KernelRecipe) -> list[str]:
    """ARCH and the compiler, through the build worker's wrapper $LABGATE_CC (it takes the compiler as its
    first word: ccache and the warning ledger)."""
    variables = [f"ARCH={recipe.arch}"]
    if recipe.toolchain == "clang":
        return [*variables, "LLVM=1", 'CC="$LABGATE_CC clang"']
    cross = ARCHES[recipe.arch].cross_compile
    if cross:
        variables.append(f"CROSS_COMPILE={cross}")
    return [*variables, f'CC="$LABGATE_CC {cross}gcc"']


def _reproducible_tar(root: str, member: str, tarball: str) -> str:
    """Equal files give an equal tarball: names sorted, times, owners and gzip's header fixed."""
    return (f"tar -C {root} --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - {member} "
            f'| gzip -n > "$LABGATE_BUILD/{tarball}"')  # fmt: skip


def kernel_artifacts(recipe: KernelRecipe) -> tuple[str, ...]:
    """What every kernel build collects, relative to the build dir, whatever its plan lists."""
    image = (recipe.image_path,) if "image" in recipe.targets else ()
    return (
        ".config",
        "System.map",
        *image,
        *(tarball for target, tarball in TARBALLS.items() if target in recipe.targets),
    )


def build_artifacts(build: Build) -> tuple[str, ...]:
    """The artifact patterns the build job collects: a kernel build's own, then the plan's, once each."""
    own = kernel_artifacts(build.kernel) if build.kernel is not None else ()
    return tuple(dict.fromkeys((*own, *build.artifacts)))


def kernel_build_of(build: Build, tree_name: str) -> dict[str, str] | None:
    """The worker's KernelBuild fields (workers/spec.py) of a kernel recipe; None for a command build.
    The warm key names the build dir a build may reuse: equal exactly when the tree and everything that
    shapes the build's output are (not the build's name, timeout or artifact list)."""
    if build.kernel is None:
        return None
    recipe = build.kernel
    shape = {
        "tree": tree_name,
        "arch": recipe.arch,
        "config": None if recipe.config_file else recipe.config or "defconfig",
        "config_file": recipe.config_file,
        "fragments": list(recipe.fragments),
        "toolchain": recipe.toolchain,
        "goals": list(recipe.make_targets),
    }
    key = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:32]
    return {"arch": recipe.arch, "toolchain": recipe.toolchain, "warm_key": key}


def documentation_only(plan: Plan, changed_files: Sequence[str]) -> bool:
    """A change that touches only documentation (the plan's `documentation` globs): it gets the static
    stage, no build and no boot."""
    return bool(changed_files) and all(first_match(plan.documentation, f) is not None for f in changed_files)


def documentation_only_note(plan: Plan, changed_files: Sequence[str]) -> str | None:
    """The report's sentence for a documentation-only change; None for any other change."""
    if not documentation_only(plan, changed_files):
        return None
    used = [g for g in plan.documentation if any(first_match((g,), f) for f in changed_files)]
    return f"documentation-only change: only the static checks ran (every changed file matches {' or '.join(used)})"


@dataclass(frozen=True)
class Selection:
    """Whether a test runs for a change, and the sentence saying why."""

    test: Test
    selected: bool
    reason: str
    # The report says it: a test left out, or one run only because its areas could not be checked.
    noteworthy: bool = False


def explain_selection(plan: Plan, changed_files: Sequence[str], maintainers_text: str | None = None) -> list[Selection]:
    """Each test of the plan, selected or not. A test runs for a change touching one of its `paths` or a
    file of one of its `areas` (MAINTAINERS sections of the base); with neither, for every change. When
    its areas cannot be checked (no MAINTAINERS, no such section) the test runs: a test is never left out
    on a guess."""
    areas = _area_files(plan, changed_files, maintainers_text)
    return [_select(test, changed_files, areas) for test in plan.tests]


def select_tests(plan: Plan, changed_files: Sequence[str], maintainers_text: str | None = None) -> list[Test]:
    """Tests to run for a change (explain_selection says why)."""
    return [s.test for s in explain_selection(plan, changed_files, maintainers_text) if s.selected]


@dataclass(frozen=True)
class _AreaFiles:
    """The changed files each MAINTAINERS section a test names covers; `unavailable` says why none can be told."""

    covered: dict[str, list[str]]
    unavailable: str | None = None
    partly_read: frozenset[str] = frozenset()  # sections some F:/N: line of which could not be read


def _area_files(plan: Plan, changed_files: Sequence[str], maintainers_text: str | None) -> _AreaFiles:
    wanted = {area for test in plan.tests for area in test.areas}
    if not wanted:
        return _AreaFiles({})
    if maintainers_text is None:
        return _AreaFiles({}, "no MAINTAINERS was read at the base (none, or over the size cap)")
    try:
        maintainers = parse_maintainers(maintainers_text)
    except UserError as error:
        return _AreaFiles({}, f"MAINTAINERS cannot be read: {error}")
    covered = {area: maintainers.files_of_section(area, changed_files) for area in sorted(wanted)}
    return _AreaFiles({area: files for area, files in covered.items() if files is not None},
                      partly_read=maintainers.partly_read() & wanted)  # fmt: skip


def _select(test: Test, changed: Sequence[str], areas: _AreaFiles) -> Selection:
    if not test.paths and not test.areas:
        return Selection(test, True, f"test {test.name} runs for every change")
    for path in changed:
        glob = first_match(test.paths, path)
        if glob is not None:
            return Selection(test, True, f"test {test.name} selected: the change touches {path} ({glob})")
    for area in test.areas:
        if areas.covered.get(area):
            return Selection(test, True, f"test {test.name} selected: the change touches "
                             f"{areas.covered[area][0]} (MAINTAINERS {area})")  # fmt: skip
    if test.areas and areas.unavailable:
        return Selection(test, True, f"test {test.name} selected: its areas ({', '.join(test.areas)}) cannot be "
                         f"checked: {areas.unavailable}", noteworthy=True)  # fmt: skip
    unknown = [area for area in test.areas if area not in areas.covered]
    if unknown:
        return Selection(test, True, f"test {test.name} selected: MAINTAINERS has no section named "
                         f"{', '.join(unknown)} to check its areas against", noteworthy=True)  # fmt: skip
    unread = [area for area in test.areas if area in areas.partly_read]
    if unread:
        return Selection(test, True, f"test {test.name} selected: MAINTAINERS {', '.join(unread)} has patterns "
                         "labgate cannot read, so what it covers cannot be told", noteworthy=True)  # fmt: skip
    touched = [*test.paths, *(f"MAINTAINERS {area}" for area in test.areas)]
    return Selection(test, False, f"test {test.name} not selected: the change touches none of {', '.join(touched)}",
                     noteworthy=True)  # fmt: skip


PLAN_SCHEMA_TITLE = "labgate in-tree plan, version 1"


def plan_json_schema() -> dict[str, Any]:
    return json_schema(Plan, PLAN_SCHEMA_TITLE)


def render_plan_json_schema() -> str:
    return render_json_schema(Plan, PLAN_SCHEMA_TITLE)
