"""Method options on the command line, generated from the methods' own `Option` declarations.

Every option that an installed method declares becomes a flag of `explain`, `evaluate` and
`inspect` with the library's name (`discard_ratio=` -> `--discard-ratio`, and the underscore
spelling `--discard_ratio` that vit_explain.py used), so `vitx methods`, the library and the
three commands agree, and a plugin's new option needs no CLI code. A flag goes to every
chosen method that declares the option; one that none of them declares is an error. A
command's own flag of the same name (evaluate's `--seed`, `--baseline`, `--masks`) keeps its
meaning, and the method option stays reachable as `-o NAME=VALUE`, which works everywhere
(`-o METHOD.NAME=VALUE` for one method of several).
"""
import math
from typing import Dict, Iterable, List

import click

from ..errors import VitxError

PREFIX = "method_option__"
CLICK_TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def declared_options() -> Dict[str, list]:
    """{option name: [(method, Option)]} over every installed method."""
    from ..attribution.api import list_methods

    declared: Dict[str, list] = {}
    for method, (cls, _) in list_methods().items():
        for option in cls.options:
            declared.setdefault(option.name, []).append((method, option))
    return declared


def method_option_flags(reserved: Iterable[str] = ()):
    """Decorator adding one flag per declared option name (and `-o/--option`), except the
    `reserved` names a command uses itself."""

    def decorate(command):
        for name, declarations in sorted(declared_options().items(), reverse=True):
            if name in reserved:
                continue
            types = {d.type for _, d in declarations}
            kind = CLICK_TYPES.get(types.pop()) if len(types) == 1 else None
            spellings = [flag for spelling in _spellings(name, declarations)
                         for flag in [f"--{spelling.replace('_', '-')}"] + ([f"--{spelling}"] if "_" in spelling else [])]
            methods = ", ".join(sorted(m for m, _ in declarations))
            command = click.option(*spellings, PREFIX + name, type=kind or click.STRING, default=None,
                                   help=f"{declarations[0][1].help} ({methods})")(command)
        return click.option("--option", "-o", "method_option_pairs", multiple=True,
                            help="Any method option as NAME=VALUE, or METHOD.NAME=VALUE (repeatable).")(command)

    return decorate


def flag_value(kwargs: dict, name: str):
    """The value of the generated flag for option `name` (None when not given)."""
    return kwargs.get(PREFIX + name)


def drop_flag(kwargs: dict, name: str) -> None:
    kwargs[PREFIX + name] = None


def given_options(kwargs: dict) -> Dict[str, object]:
    """Pop the generated flags out of a command's keyword arguments: {name: value} of those given,
    then the `-o` pairs (a flag and an -o pair for the same option must agree)."""
    given = {key[len(PREFIX):]: kwargs.pop(key) for key in [k for k in kwargs if k.startswith(PREFIX)]}
    given = {name: value for name, value in given.items() if value is not None}
    for name, value in given.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise VitxError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for pair in kwargs.pop("method_option_pairs", ()) or ():
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise VitxError(f"-o expects NAME=VALUE, got {pair!r}")
        if key in given and str(given[key]) != value.strip():
            flag = key.rsplit(".", 1)[-1].replace("_", "-")
            raise VitxError(f"--{flag} {given[key]} and -o {key}={value.strip()} disagree; give one")
        given[key] = value.strip()
    return given


def per_method(given: Dict[str, object], methods: List[str]) -> Dict[str, dict]:
    """{method: its options} from the given options: `NAME` goes to each method that declares
    it, `METHOD.NAME` to that method alone. An option no chosen method takes is an error,
    never silently dropped."""
    from ..registry import get_explainer

    options: Dict[str, dict] = {m: {} for m in methods}
    for key, value in given.items():
        method, _, name = key.rpartition(".")
        targets = [method] if method else [m for m in methods if _declares(get_explainer(m).cls, name)]
        if method and method not in options:
            raise VitxError(f"-o {key}: method {method!r} is not among the chosen methods ({', '.join(methods)})")
        if not targets or not _declares(get_explainer(targets[0]).cls, name):
            owners = sorted(m for m, _ in declared_options().get(name, []))
            where = f"; it belongs to {', '.join(owners)}" if owners else ""
            chosen = targets or methods
            who = (f"method {chosen[0]!r} has no option {name!r}" if len(chosen) == 1
                   else f"no option {name!r} in any of the methods {', '.join(chosen)}")
            raise VitxError(f"{who}{where} (see `vitx methods`)")
        for target in targets:
            option = _declared(get_explainer(target).cls, name)
            canonical = option.name
            if isinstance(value, str):  # an -o pair: its text read as the option's type ('2.5' is no int)
                value = option.from_text(value, target)
            if canonical in options[target] and str(options[target][canonical]) != str(value):
                raise VitxError(f"option {canonical} of {target} given twice with different values "
                                f"({options[target][canonical]} and {value}); give one")
            options[target][canonical] = value
    return options


def _spellings(name: str, declarations) -> List[str]:
    """The option's name, then every older spelling any method keeps for it (in order)."""
    aliases = [alias for _, option in declarations for alias in option.aliases]
    return [name] + [a for i, a in enumerate(aliases) if a not in aliases[:i] and a != name]


def _declared(cls, name: str):
    """The option of `cls` spelt `name` (its name or an older spelling), else None."""
    return next((o for o in cls.options if name in o.spellings), None)


def _declares(cls, name: str) -> bool:
    return _declared(cls, name) is not None
