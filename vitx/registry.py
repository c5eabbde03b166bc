"""The plugin manager and the lookups built on it (explainers, adapters, models by name).

Third-party packages arrive through the `vitx` entry-point group, and so do the reference
models and the core's own hook modules (the adapters, the model aliases). The built-in
explainers are the modules of the `vitx.plugins` package, each registered as its own plugin
under its module name (llm's DEFAULT_PLUGINS): a new method is one file there, found without a
setup.py line or a reinstall. They import only `vitx.plugin`, the door a third party uses. So
this module imports none of what it registers (the plugins by name, at run time), and the
layers point one way: adapters and loaders ask the registry, never the reverse.

Debugging switches: VITX_DISABLE_PLUGINS=name1,name2 (or '*') skips entry points;
VITX_PLUGINS=name1,name2 loads only those. The core's entry points (CORE_ENTRY_POINTS) are
never skipped: without adapters no model can be explained.
"""
import importlib
import importlib.metadata
import os
import pkgutil
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import pluggy

from . import hookspecs
from .errors import VitxError, suggest

ENTRY_POINT_GROUP = "vitx"
CORE_PLUGIN = "vitx (core)"
CORE_ENTRY_POINTS = ("vitx.adapters", "vitx.models")  # part of vitx itself: always loaded
BUILTIN_PACKAGE = "vitx.plugins"  # every module in it is a built-in plugin, named after the module


@dataclass
class ExplainerEntry:
    cls: type
    plugin: str


@dataclass
class ModelEntry:
    name: str
    loader: Callable
    description: str = ""
    family: str = ""
    plugin: str = ""


@dataclass
class Registry:
    manager: pluggy.PluginManager
    explainers: Dict[str, ExplainerEntry] = field(default_factory=dict)
    adapters: List[object] = field(default_factory=list)
    models: Dict[str, ModelEntry] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)  # plugin name -> distribution


_registry: Optional[Registry] = None


def _env_list(name: str):
    value = os.environ.get(name, "").strip()
    return {v.strip() for v in value.split(",") if v.strip()} if value else None


def _skipped(name: str) -> bool:
    """VITX_DISABLE_PLUGINS / VITX_PLUGINS (debugging switches); the core's entry points never."""
    disabled = _env_list("VITX_DISABLE_PLUGINS") or set()
    allowed = _env_list("VITX_PLUGINS")
    skipped = "*" in disabled or name in disabled or (allowed is not None and name not in allowed)
    return skipped and name not in CORE_ENTRY_POINTS


def _register(registry: "Registry", name: str, where: str, load) -> bool:
    """Register the module `load()` returns as plugin `name`; a broken plugin is recorded and
    warned about, never allowed to take vitx down with it."""
    if _skipped(name) or registry.manager.get_plugin(name) is not None:
        return False
    try:
        registry.manager.register(load(), name=name)
    except Exception as exc:
        registry.failed[name] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"vitx: plugin {name!r} ({where}) failed to load: {exc}", stacklevel=3)
        return False
    return True


def _load_builtins(registry: "Registry") -> None:
    """Every module of `vitx.plugins`, found on disk (pkgutil), so a new file is a new method."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = f"{BUILTIN_PACKAGE}.{info.name}"
        if _register(registry, info.name, module, lambda module=module: importlib.import_module(module)):
            registry.sources[info.name] = "vitx"


def _load_entry_points(registry: "Registry") -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _register(registry, ep.name, ep.value, ep.load):
            continue
        dist = getattr(ep, "dist", None)
        registry.sources[ep.name] = (CORE_PLUGIN if ep.name in CORE_ENTRY_POINTS
                                     else dist.name if dist is not None else ep.value)


# Names become flags (`-o METHOD.NAME`), file names (`<image>_<method>.png`) and report
# anchors: a method is an identifier, a model a word of letters, digits, `_`, `.` and `-`
# that cannot start with a dot. A name that is not one is refused, before it can write
# outside an output folder (`../../x`) or split a flag.
METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _valid_name(name, pattern, plugin: str, what: str) -> bool:
    if isinstance(name, str) and pattern.match(name):
        return True
    warnings.warn(f"vitx: plugin {plugin!r} registered the {what} name {name!r}, ignored: a {what} name is "
                  f"{'an identifier (letters, digits, _)' if what == 'method' else 'letters, digits, _ . -'}",
                  stacklevel=2)
    return False


BUILTIN_SOURCES = ("vitx", CORE_PLUGIN)  # the vitx distribution's own entry points, and the core modules


def is_builtin(label: str) -> bool:
    return label in BUILTIN_SOURCES


def _collect(registry: "Registry", hook_name: str):
    """Call one register-style hook plugin by plugin, remembering who registered what.

    Yields (plugin label, args, kwargs) for every register(...) call: built-ins first, then
    third-party plugins sorted by label, so that a name two plugins claim resolves the same way
    whatever order they were discovered in. A plugin whose hook raises is reported as a
    warning and skipped.
    """
    manager = registry.manager
    impls = []
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        name = manager.get_name(impl.plugin)
        impls.append((registry.sources.get(name, name), impl))
    impls.sort(key=lambda item: (not is_builtin(item[0]), item[0]))
    for label, impl in impls:
        calls = []
        try:
            impl.function(lambda *args, **kwargs: calls.append((args, kwargs)))
        except Exception as exc:
            registry.failed[label] = f"{hook_name} raised {type(exc).__name__}: {exc}"
            warnings.warn(f"vitx: plugin {label!r} failed in {hook_name}: {exc}", stacklevel=2)
            continue
        for args, kwargs in calls:
            yield label, args, kwargs


def _claim(table: dict, name: str, entry, plugin: str, what: str) -> None:
    """Put `entry` under `name` unless an earlier plugin (a built-in, or a third-party plugin
    first by name) holds it: then the earlier one stays, and a warning names both."""
    held = table.get(name)
    if held is None:
        table[name] = entry
    elif held is not entry:
        warnings.warn(f"vitx: {what} {name!r} from plugin {plugin!r} ignored: {held.plugin!r} registers that name "
                      f"({'built-ins win' if is_builtin(held.plugin) else 'the first plugin by name wins'})",
                      stacklevel=2)


def _model_entry(plugin: str, args, kwargs):
    """(entry, aliases) of one register(name, loader, description=, family=, aliases=) call;
    a call of another shape is a warning naming the plugin, never an error (a broken plugin
    must not take every vitx command down)."""
    kwargs = dict(kwargs)
    aliases = kwargs.pop("aliases", None) or []
    try:
        entry = ModelEntry(*args, plugin=plugin, **kwargs)
        if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
            raise TypeError(f"aliases must be a list of names, got {aliases!r}")
        if not isinstance(entry.name, str) or not entry.name or not callable(entry.loader):
            raise TypeError("expected register(name: str, loader: callable, description=..., aliases=[...])")
    except TypeError as exc:
        warnings.warn(f"vitx: plugin {plugin!r} made a bad register(...) call for a model, ignored: {exc}",
                      stacklevel=2)
        return None, []
    return entry, list(aliases)


def _build() -> Registry:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager=manager)
    _load_builtins(registry)
    _load_entry_points(registry)
    missing = [name for name in CORE_ENTRY_POINTS if manager.get_plugin(name) is None]
    if missing:
        raise VitxError(f"vitx's own entry points ({', '.join(missing)}) are not installed: vitx is imported from a "
                        "source tree without its metadata; run `pip install -e .` (or `make install`) there")
    _populate(registry)
    return registry


def _populate(registry: Registry) -> None:
    """(Re)collect explainers, adapters and models from every registered plugin."""
    registry.explainers.clear()
    registry.adapters.clear()
    registry.models.clear()
    for plugin, args, _ in _collect(registry, "vitx_register_explainers"):
        cls = args[0] if args else None
        name = getattr(cls, "name", None)
        if not isinstance(cls, type) or not name:
            warnings.warn(f"vitx: plugin {plugin!r} registered an explainer without a name; ignored")
        elif _valid_name(name, METHOD_NAME, plugin, "method"):
            _claim(registry.explainers, name, ExplainerEntry(cls, plugin), plugin, "explainer")
    for plugin, args, _ in _collect(registry, "vitx_register_adapters"):
        if args:
            registry.adapters.append(args[0])
    registry.adapters.sort(key=lambda a: -getattr(a, "priority", 0))
    for plugin, args, kwargs in _collect(registry, "vitx_register_models"):
        entry, aliases = _model_entry(plugin, args, kwargs)
        for name in ([entry.name] if entry else []) + aliases:
            if _valid_name(name, MODEL_NAME, plugin, "model"):
                _claim(registry.models, name, entry, plugin, "model")


def register_plugin(plugin, name: Optional[str] = None) -> None:
    """Register a plugin object or module in this process (notebooks, tests), as an
    installed entry point would."""
    registry = get_registry()
    registry.manager.register(plugin, name=name)
    _populate(registry)


def get_registry() -> Registry:
    global _registry
    if _registry is None:
        _registry = _build()
    return _registry


def reset() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in a running process)."""
    global _registry
    _registry = None


def get_explainer(name: str) -> ExplainerEntry:
    explainers = get_registry().explainers
    if name not in explainers:
        raise VitxError(
            f"unknown method {name!r}.{suggest(name, explainers)} Available: {', '.join(sorted(explainers))}"
        )
    return explainers[name]


def data_config(model) -> dict:
    """How to preprocess images for `model` (wrappers seen through): its adapter's data config."""
    from .unwrap import unwrap

    model = unwrap(model)
    return find_adapter(model).preprocessing(model)


def find_adapter(model):
    from .unwrap import unwrap

    model = unwrap(model)
    for adapter in get_registry().adapters:
        if adapter.matches(model):
            return adapter
    raise VitxError(f"no adapter recognises {type(model).__name__}")
