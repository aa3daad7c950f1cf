"""In-tree plan (`.labgate/plan.yaml`) v1: parsing with file:line:key errors, job selection."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.core.schema import json_schema, render_json_schema
from workers.errors import UserError
from workers.spec import unsafe_path_reason

NAME = r"^[a-z0-9][a-z0-9._-]*$"
PLAN_PATH = ".labgate/plan.yaml"
MAX_PLAN_CHARS = 256 * 1024  # a plan is read by the control plane, before any trust is decided


class PlanError(UserError):
    """The plan is missing or invalid; the message names the file, line and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KernelRecipe(_Strict):
    """A Linux kernel build: a config target, fragments merged in order, one make target."""

    arch: str = Field("x86_64", pattern=r"^[a-z0-9_]+$")
    config: str = Field("defconfig", pattern=r"^[a-z0-9_.]*config$")
    fragments: tuple[str, ...] = ()
    target: str = Field("bzImage", pattern=r"^[A-Za-z0-9_./-]+$")
    toolchain: Literal["gcc", "clang"] = "gcc"


class StaticChecks(_Strict):
    """The static stage, run before any build (workers/static.py); every check reads the base's tools."""

    checkpatch: Literal["off", "on", "strict"] = "on"
    diff_check: bool = True
    kernel_doc: bool = True


def _artifact_pattern(pattern: str) -> str:
    reason = unsafe_path_reason(pattern)
    if reason:
        raise ValueError(f"artifact pattern {pattern!r} {reason}: patterns are relative to $LABGATE_BUILD")
    return pattern


def _kernel_name(name: str) -> str:
    reason = None if name == "debian" else unsafe_path_reason(name)
    if reason:
        raise ValueError(f"kernel {name!r} {reason}: give 'debian' or an artifact path of the build")
    return name


class Build(_Strict):
    name: str = Field(pattern=NAME)
    command: str | None = None
    kernel: KernelRecipe | None = None
    artifacts: tuple[Annotated[str, AfterValidator(_artifact_pattern)], ...] = Field(min_length=1)
    timeout: int = Field(600, gt=0)

    @model_validator(mode="after")
    def _one_recipe(self) -> Build:
        if (self.command is None) == (self.kernel is None):
            raise ValueError("give exactly one of `command` or `kernel`")
        return self


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
    paths: tuple[str, ...] = ()
    kunit: bool = False  # relay the kernel's built-in KUnit results (debugfs) as tests
    modules: str | None = None  # an artifact of the build (modules tarball) unpacked into the initramfs
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
    build_names = {b.name for b in plan.builds}
    for index, test in enumerate(plan.tests):
        if test.build not in build_names:
            problems.append((("tests", index, "build"), f"no build named {test.build!r} in the plan"))
        unique(("tests", index, "commands"), [c.name for c in test.commands])
    return problems


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
    """The shell script a build job runs at the worktree root."""
    if build.command is not None:
        return build.command
    recipe = build.kernel
    assert recipe is not None
    make = f'make -s O="$LABGATE_BUILD" ARCH={shlex.quote(recipe.arch)}'
    steps = [f"{make} {shlex.quote(recipe.config)}"]
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
    steps.append(f'{make} -j"$(nproc)" {shlex.quote(recipe.target)}')
    return "\n".join(steps) + "\n"


def kernel_build_of(build: Build, tree_name: str) -> dict[str, str] | None:
    """The worker's KernelBuild fields (workers/spec.py) of a kernel recipe; None for a command build.
    The warm key names the build dir a build may reuse: equal only for the same tree and recipe."""
    if build.kernel is None:
        return None
    recipe = build.kernel
    key = hashlib.sha256(f"{tree_name}\0{render_build_script(build)}".encode()).hexdigest()[:32]
    return {"arch": recipe.arch, "toolchain": recipe.toolchain, "warm_key": key}


def documentation_only(plan: Plan, changed_files: Sequence[str]) -> bool:
    """A change that touches only documentation: it gets the static stage, no build and no boot."""
    return bool(changed_files) and all(f.startswith("Documentation/") for f in changed_files)


def select_tests(plan: Plan, changed_files: Sequence[str]) -> list[Test]:
    """Tests to run for a change: those without `paths`, and those whose paths it touches."""
    selected = []
    for test in plan.tests:
        if not test.paths or any(f.startswith(p) for p in test.paths for f in changed_files):
            selected.append(test)
    return selected


PLAN_SCHEMA_TITLE = "labgate in-tree plan, version 1"


def plan_json_schema() -> dict[str, Any]:
    return json_schema(Plan, PLAN_SCHEMA_TITLE)


def render_plan_json_schema() -> str:
    return render_json_schema(Plan, PLAN_SCHEMA_TITLE)
