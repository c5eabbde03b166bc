"""The plugin manager and the lookups built on it (explainers, adapters, models by name).

Built-in explainers live in `vitx.plugins` and arrive through the `vitx` entry-point group,
the same door a third-party package uses. Core modules that define hook implementations
(adapters, model aliases) are registered directly: they are part of vitx, not plugins.

Debugging switches: VITX_DISABLE_PLUGINS=name1,name2 (or '*') skips entry points;
VITX_PLUGINS=name1,name2 loads only those.
"""
import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import pluggy

from . import hookspecs
from .errors import VitxError, suggest

ENTRY_POINT_GROUP = "vitx"
CORE_PLUGIN = "vitx (core)"


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


def _load_entry_points(registry: "Registry") -> None:
    manager = registry.manager
    disabled = _env_list("VITX_DISABLE_PLUGINS") or set()
    allowed = _env_list("VITX_PLUGINS")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if "*" in disabled or ep.name in disabled or (allowed is not None and ep.name not in allowed):
            continue
        if manager.get_plugin(ep.name) is not None:
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take vitx down with it
            registry.failed[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"vitx: plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        dist = getattr(ep, "dist", None)
        registry.sources[ep.name] = dist.name if dist is not None else ep.value


def _collect(registry: "Registry", hook_name: str):
    """Call one register-style hook plugin by plugin, remembering who registered what.

    Yields (plugin label, args, kwargs) for every register(...) call. A plugin whose hook
    raises is reported as a warning and skipped.
    """
    manager = registry.manager
    for impl in getattr(manager.hook, hook_name).get_hookimpls():
        name = manager.get_name(impl.plugin)
        label = registry.sources.get(name, name)
        calls = []
        try:
            impl.function(lambda *args, **kwargs: calls.append((args, kwargs)))
        except Exception as exc:
            warnings.warn(f"vitx: plugin {label!r} failed in {hook_name}: {exc}", stacklevel=2)
            continue
        for args, kwargs in calls:
            yield label, args, kwargs


def _build() -> Registry:
    from .capture import adapters
    from . import models

    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    manager.register(adapters, name="vitx.adapters")
    manager.register(models, name="vitx.models")
    registry = Registry(manager=manager, sources={"vitx.adapters": CORE_PLUGIN, "vitx.models": CORE_PLUGIN})
    _load_entry_points(registry)
    _populate(registry)
    return registry


def _populate(registry: Registry) -> None:
    """(Re)collect explainers, adapters and models from every registered plugin."""
    registry.explainers.clear()
    registry.adapters.clear()
    registry.models.clear()
    for plugin, (cls, *_), _ in _collect(registry, "vitx_register_explainers"):
        name = getattr(cls, "name", None)
        if not name:
            warnings.warn(f"vitx: plugin {plugin!r} registered an explainer without a name; ignored")
        elif name in registry.explainers:
            warnings.warn(
                f"vitx: explainer {name!r} from {plugin!r} ignored: already registered by "
                f"{registry.explainers[name].plugin!r}"
            )
        else:
            registry.explainers[name] = ExplainerEntry(cls, plugin)
    for plugin, (adapter, *_), _ in _collect(registry, "vitx_register_adapters"):
        registry.adapters.append(adapter)
    registry.adapters.sort(key=lambda a: -getattr(a, "priority", 0))
    for plugin, args, kwargs in _collect(registry, "vitx_register_models"):
        entry = ModelEntry(*args, plugin=plugin, **kwargs)
        registry.models[entry.name] = entry


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
    from .capture.unwrap import unwrap

    model = unwrap(model)
    return find_adapter(model).data_config(model)


def find_adapter(model):
    from .capture.unwrap import unwrap

    model = unwrap(model)
    for adapter in get_registry().adapters:
        if adapter.matches(model):
            return adapter
    raise VitxError(f"no adapter recognises {type(model).__name__}")
