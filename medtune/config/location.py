"""Where the config comes from: the shipped groups (medtune/conf/) and, beside them, a folder of your own.

    python -m medtune.train --config-dir my_config +experiment=own_vi     # or: export MEDTUNE_CONFIG_DIR=my_config
    my_config/experiment/own_vi.yaml  ->  +experiment=own_vi
    my_config/data_mix/own_vi.yaml    ->  data_mix=own_vi       (every shipped choice stays available)

Every command that composes a config takes the folder the same way. `take_config_dir` removes `--config-dir DIR`
from the command line and exports the folder as MEDTUNE_CONFIG_DIR, so the processes a command starts (a bench
configuration in its own process) see it too. Hydra gets it as one more entry of its search path, after the
shipped folder: Hydra's own `--config-dir` for medtune.train and medtune.evaluate (`hydra_argv`), the same entry
through `hydra.searchpath` for `compose()` (`searchpath_overrides`). Hydra takes the first file it finds, so a
file of yours with a shipped file's name would be ignored without a word: it is refused, as are a folder that is not
there and a choice found in neither place, with one line naming the folders and the fix (`check_choices`).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from medtune.config.checks import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
ENV = "MEDTUNE_CONFIG_DIR"
OPTION_HELP = (
    "a folder of your own config files in group folders (DIR/experiment/x.yaml is +experiment=x, DIR/data_mix/y.yaml "
    "is data_mix=y), used beside the shipped ones (default: $MEDTUNE_CONFIG_DIR)"
)
_OPTIONS = ("--config-dir", "-cd")  # -cd: Hydra's own short form, which medtune.train users may know


def take_config_dir(argv: list[str]) -> list[str]:
    """argv without `--config-dir DIR` (or `--config-dir=DIR`, `-cd DIR`); the folder is checked and exported."""
    rest, folder, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in _OPTIONS:
            if i + 1 == len(argv):
                raise ConfigError(f"{arg} needs a folder: {arg} my_config")
            folder, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config-dir="):
            folder = arg.partition("=")[2]
        else:
            rest.append(arg)
        i += 1
    use_config_dir(folder)
    return rest


def hydra_argv(argv: list[str]) -> list[str]:
    """A Hydra app's sys.argv with the folder of `--config-dir DIR` or $MEDTUNE_CONFIG_DIR checked and given as an
    absolute path, and its choices checked (ConfigError), so Hydra composes what `compose()` would."""
    rest = take_config_dir(argv[1:])
    check_choices(rest)
    folder = user_config_dir()
    # Hydra's own --config-dir puts the folder where hydra.searchpath would (after the shipped one); as an option it
    # may stand anywhere on the line, and --help lists the folder's choices too
    return [argv[0], *(["--config-dir", str(folder)] if folder else []), *rest]


def use_config_dir(folder: str | None) -> None:
    """Export `folder` (made absolute) as MEDTUNE_CONFIG_DIR for this process and its children; None leaves it."""
    if folder is None:
        return
    os.environ[ENV] = str(_checked(Path(folder), f"--config-dir {folder}"))


def user_config_dir() -> Path | None:
    """The user's folder named by $MEDTUNE_CONFIG_DIR, checked (there, nothing shadows a shipped file), or None."""
    value = os.environ.get(ENV, "")
    return _checked(Path(value), f"{ENV}={value}") if value else None


def searchpath_overrides() -> list[str]:
    """The Hydra override that adds the user's folder to the search path; [] without a folder."""
    folder = user_config_dir()
    if folder is None:
        return []
    quoted = str(folder).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.searchpath=['file://{quoted}']"]


def _checked(folder: Path, named: str) -> Path:
    """The folder, absolute; ConfigError when it is missing or holds a file with the name of a shipped one."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"{named}: no such folder ({folder}). Create it with your files in group folders "
            f"(e.g. {folder / 'experiment'}/my_run.yaml) or give the right path."
        )
    for path in sorted(folder.rglob("*.yaml")):
        rel = path.relative_to(folder)
        if (CONF / rel).is_file():
            raise ConfigError(
                f"{path} has the name of a shipped config ({CONF / rel}), so the shipped one would be used and yours "
                f"ignored. Rename yours (e.g. {rel.with_name(rel.stem + '_own.yaml')}) and choose it by its new name."
            )
    return folder


def check_choices(overrides: list[str]) -> None:
    """Every group choice in `overrides` (`group=x`, `+group=x`, sweeps `group=x,y`) names a file in a folder,
    and so does every defaults entry of the user's files chosen; ConfigError names the folders and the fix."""
    folder = user_config_dir()
    seen: set[tuple[str, str]] = set()
    for group, name, where in _override_choices(overrides, folder):
        _check_choice(group, name, where, folder, seen)


def _override_choices(overrides: list[str], folder: Path | None) -> list[tuple[str, str, str]]:
    """(group, choice, the override) for each override that picks a config group's file; unparsable ones are
    left to Hydra, which names the syntax error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if "=" in o and o[0] != "-"])
    except HydraException:
        return []
    found = []
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or group.startswith("hydra") or not _is_group(group, folder):
            continue
        try:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        except HydraException:  # a glob or range sweep over a group: Hydra expands and checks it
            continue
        found += [(group, v, override.input_line) for v in values if isinstance(v, str)]
    return found


def _is_group(group: str, folder: Path | None) -> bool:
    return (CONF / group).is_dir() or (folder is not None and (folder / group).is_dir())


def _check_choice(group: str, name: str, where: str, folder: Path | None, seen: set[tuple[str, str]]) -> None:
    """`group/name.yaml` is shipped or in the user's folder; a user file's own defaults entries are checked too."""
    if (group, name) in seen:
        return
    seen.add((group, name))
    if (CONF / group / f"{name}.yaml").is_file():
        return  # shipped files are kept consistent by tests/config
    if folder is not None and (folder / group / f"{name}.yaml").is_file():
        path = folder / group / f"{name}.yaml"
        for ref_group, ref_name, entry in _defaults_choices(path, group, folder):
            _check_choice(ref_group, ref_name, f"{path}: defaults entry `{entry}`", folder, seen)
        return
    raise ConfigError(_not_found(group, name, where, folder))


def _defaults_choices(path: Path, group: str, folder: Path) -> list[tuple[str, str, str]]:
    """(group, choice, entry) for each `[override] /group: choice` (or `group: choice` inside `path`'s group)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return []  # Hydra reports the file's syntax with its line
    defaults = data.get("defaults") if isinstance(data, dict) else None
    found = []
    for entry in defaults if isinstance(defaults, list) else []:
        if not isinstance(entry, dict) or len(entry) != 1:
            continue
        key, value = next(iter(entry.items()))
        ref = str(key).removeprefix("override ").removeprefix("optional ").strip().split("@")[0]
        if str(key).startswith("optional") or not isinstance(value, str):
            continue
        ref_group = ref[1:] if ref.startswith("/") else f"{group}/{ref}"
        if _is_group(ref_group, folder):
            found.append((ref_group, value, f"{key}: {value}"))
    return found


def _not_found(group: str, name: str, where: str, folder: Path | None) -> str:
    """One line: what was asked, the folders searched, the file to create or the choices there are."""
    shipped = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    own = sorted(p.stem for p in (folder / group).glob("*.yaml")) if folder is not None else []
    choices = ", ".join(own + shipped) or "none"
    if folder is None:
        searched = f"no {group}/{name}.yaml among the shipped configs ({CONF})"
        fix = f"a file of your own goes in a folder given by --config-dir DIR or {ENV}, as DIR/{group}/{name}.yaml"
    else:
        searched = f"no {group}/{name}.yaml in {folder} or among the shipped configs ({CONF})"
        fix = f"create {folder / group / (name + '.yaml')}" + _near_miss(name, folder)
    return f"{where}: {searched}; {fix}, or choose one of: {choices}."


def _near_miss(name: str, folder: Path) -> str:
    """A file of that name with a .yml suffix (Hydra reads .yaml only), or outside the shipped group folders."""
    misplaced = [p for p in folder.rglob(f"{name}.yaml") if not (CONF / p.parent.relative_to(folder)).is_dir()]
    hits = sorted(folder.rglob(f"{name}.yml")) + sorted(misplaced)
    return f" (there is {hits[0]}: move or rename it)" if hits else ""
