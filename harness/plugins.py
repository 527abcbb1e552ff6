"""The plugin manager and the typed facade the runner uses instead of ``pm.hook``.

Built-in plugins are registered from :data:`BUILTIN_PLUGINS`; third-party ones
come from the entry-point group ``harness``, each loaded in its own
``try``/``except`` so that one broken package is reported, not fatal.

Environment switches:

``HARNESS_PLUGINS``
    comma-separated entry-point or distribution names to load; set but empty
    loads no third-party plugin (built-ins always load).
``HARNESS_BLOCK_PLUGINS``
    comma-separated plugin names never to register (built-in or third-party).
``HARNESS_TRACE_PLUGINS``
    ``1`` prints every hook call to stderr.
``HARNESS_STRICT_PLUGINS``
    ``1`` turns a plugin that fails to load into an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pydantic import ValidationError

from harness import hookspecs, registry
from harness.errors import UserError, validation_problems
from harness.events import CellOutcome, RunInfo, RunSummary
from harness.records import Alert, CellPlan
from harness.registry import COMPONENT_KINDS, Registration, Registry
from harness.version import DISTRIBUTION_NAME, PROJECT_NAME, __version__

ENTRY_POINT_GROUP = "harness"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "harness_plugins.sources.local",
    "harness_plugins.sources.hub",
    "harness_plugins.sources.builtin",
    "harness_plugins.backends.hf",
    "harness_plugins.backends.vllm_engine",
    "harness_plugins.executors.local",
    "harness_plugins.executors.ray",
    "harness_plugins.tuners.lora",
    "harness_plugins.tuners.dora",
    "harness_plugins.tuners.qlora",
    "harness_plugins.tuners.full",
    "harness_plugins.tuners.dpo",
    "harness_plugins.tuners.orpo",
    "harness_plugins.tuners.ppo",
    "harness_plugins.tuners.grpo",
    "harness_plugins.transforms.interpolate",
    "harness_plugins.transforms.merge",
    "harness_plugins.transforms.quantize",
    "harness_plugins.rewards.rules",
    "harness_plugins.rewards.reward_model",
    "harness_plugins.evaluators.perplexity",
    "harness_plugins.evaluators.benchmark",
    "harness_plugins.evaluators.safety",
    "harness_plugins.evaluators.drift",
    "harness_plugins.reporters.console",
    "harness_plugins.reporters.mlflow",
    "harness_plugins.reporters.html",
    "harness_plugins.reporters.markdown",
)

__all__ = ["BUILTIN_PLUGINS", "COMPONENT_KINDS", "PluginHost", "PluginInfo", "PluginLoadError",
           "Registration"]


def builtin_name(module_name: str) -> str:
    """``harness_plugins.tuners.lora`` -> ``tuners.lora`` (the name to block or list)."""
    return module_name.removeprefix("harness_plugins.")


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class PluginLoadError(UserError):
    """Raised in strict mode when a plugin cannot be loaded."""


@dataclass
class PluginInfo:
    """One plugin as ``harness plugins`` shows it."""

    name: str
    module: str | None
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "components": self.components,
            "error": self.error,
        }


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginHost:
    """Typed facade over the plugin manager: the runner and the CLI call its methods, never
    ``pm.hook``.

    Create one with :meth:`load`; tests build one with ``extra_plugins`` and
    ``entry_points=False`` to stay isolated from what is installed.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self._infos = infos
        self._registry: Registry | None = None
        self._registration_problems: list[str] = []
        self.strict = False
        #: lifecycle hook calls that raised, one line each (the run went on)
        self.hook_errors: list[str] = []

    # -- construction ---------------------------------------------------------

    @classmethod
    def load(
        cls,
        *,
        entry_points: bool = True,
        extra_plugins: Iterable[Any] = (),
        strict: bool | None = None,
    ) -> PluginHost:
        strict = _env_flag("HARNESS_STRICT_PLUGINS") if strict is None else strict
        blocked = set(_env_list("HARNESS_BLOCK_PLUGINS") or [])
        pm = new_plugin_manager()
        for name in blocked:
            pm.set_blocked(name)
        infos: dict[str, PluginInfo] = {}

        for module_name in BUILTIN_PLUGINS:
            name = builtin_name(module_name)
            if name in blocked:
                continue
            info = PluginInfo(name, module_name, DISTRIBUTION_NAME, __version__, builtin=True)
            _register(pm, lambda m=module_name: importlib.import_module(m), info, strict)
            infos[name] = info

        if entry_points:
            for info in _load_entry_points(pm, blocked, strict):
                infos[info.name] = info

        for plugin in extra_plugins:
            # a readable name (module or class) rather than pluggy's id()-based one
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            if pm.is_blocked(name):
                continue
            info = PluginInfo(name, getattr(plugin, "__module__", None), None, None,
                              builtin=False)
            _register(pm, lambda p=plugin: p, info, strict)
            infos[name] = info

        if _env_flag("HARNESS_TRACE_PLUGINS"):
            pm.trace.root.setwriter(sys.stderr.write)
            pm.enable_tracing()
        host = cls(pm, infos)
        host.strict = strict
        if strict:
            host.registry()  # a raising registration hook or a rejected class is fatal too
            failed = [info for info in infos.values() if info.error]
            if failed:
                raise PluginLoadError(*(f"plugin {i.name!r}: {i.error}" for i in failed))
        return host

    # -- components -------------------------------------------------------------

    def registry(self, *, check: bool = True) -> Registry:
        """Every registered component, by kind and name (collected once).

        With ``check`` (the default), raises :class:`UserError` naming the plugins if a
        name was registered twice, is not a valid component name, or a class does not
        satisfy its kind's contract.
        """
        if self._registry is None:
            self._registry, self._registration_problems = registry.collect(
                self.pm, trace=_env_flag("HARNESS_TRACE_PLUGINS"),
                on_registered=self._note_component, on_error=self._note_error)
        if check and self._registration_problems:
            raise UserError(*self._registration_problems)
        return self._registry

    def _note_component(self, plugin: str, kind: str, name: str) -> None:
        info = self._infos.get(plugin)
        if info is not None:
            info.components.setdefault(kind, []).append(name)

    def _note_error(self, plugin: str, message: str) -> None:
        info = self._infos.get(plugin)
        if info is not None and not info.error:
            info.error = message

    def component(self, kind: str, name: str) -> Registration:
        """The component ``name`` of ``kind``, or a :class:`UserError` listing the known ones."""
        known = self.registry()[kind]
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            hint = ""
            broken = [i.name for i in self._infos.values() if i.error]
            if broken:
                hint = f" (plugins that failed to load: {', '.join(broken)})"
            raise UserError(f"unknown {kind} {name!r}; known: {choices}{hint}")
        return known[name]

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None) -> Any:
        """An instance of component ``name`` of ``kind`` with ``options`` validated by its
        ``Options``: how the CLI makes a reporter, without knowing its module."""
        cls = self.component(kind, name).cls
        try:
            validated = cls.Options.model_validate(options or {})
        except ValidationError as exc:
            raise UserError(*(f"{kind} {name!r} option {field!r}: {message}"
                              for field, message in validation_problems(exc))) from None
        return cls(validated)

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry()[kind])

    def classes(self, kind: str) -> dict[str, Any]:
        """Every registered class of ``kind`` by name (the rewards a tuner may optimise)."""
        return {name: reg.cls for name, reg in self.registry()[kind].items()}

    def plugins(self) -> list[PluginInfo]:
        """Every plugin, with the hooks it implements and what it registered."""
        self.registry(check=False)
        for name, info in self._infos.items():
            plugin = self.pm.get_plugin(name)
            if plugin is not None:
                info.hooks = sorted(
                    caller.name for caller in self.pm.get_hookcallers(plugin) or []
                )
        return sorted(self._infos.values(), key=lambda i: (not i.builtin, i.name))

    # -- lifecycle --------------------------------------------------------------

    # Lifecycle hooks are for observers. Each implementation is called on its own, so
    # that one that raises is named and the others (and the run) go on; in strict mode
    # (HARNESS_STRICT_PLUGINS=1) it stops the run instead, as a one-line error.

    def _notify(self, hook: str, **kwargs: Any) -> None:
        caller = getattr(self.pm.hook, hook)
        impls = caller.get_hookimpls()
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            caller(**kwargs)  # wrappers need pluggy's own call loop
            return
        for impl in reversed(impls):  # pluggy's own order: last registered first
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except (Exception, SystemExit) as exc:  # an observer's bug must not cost the run
                message = (f"plugin {impl.plugin_name!r} raised in {hook}: "
                           f"{type(exc).__name__}: {exc}")
                if self.strict:
                    raise UserError(message) from exc
                self.hook_errors.append(message)
                print(f"harness: warning: {message} (the run goes on)", file=sys.stderr)

    def run_started(self, run: RunInfo) -> None:
        self._notify("harness_run_started", run=run)

    def cell_started(self, cell: CellPlan) -> None:
        self._notify("harness_cell_started", cell=cell)

    def cell_finished(self, cell: CellPlan, outcome: CellOutcome) -> None:
        self._notify("harness_cell_finished", cell=cell, outcome=outcome)

    def drift_alert(self, cell: CellPlan, alert: Alert) -> None:
        self._notify("harness_drift_alert", cell=cell, alert=alert)

    def run_finished(self, run: RunInfo, summary: RunSummary) -> None:
        self._notify("harness_run_finished", run=run, summary=summary)


def _register(pm: pluggy.PluginManager, load: Any, info: PluginInfo, strict: bool) -> None:
    """Load and register one plugin, the same way for built-ins, entry points and extra
    plugins: a failure to load, or a hook with no spec (a misspelt ``harness_*`` name), is
    recorded on ``info`` and the plugin is left out, or raised in strict mode."""
    try:
        plugin = load()
        pm.register(plugin, name=info.name)
        unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                         if caller.spec is None)
        if unknown:
            pm.unregister(plugin)
            raise PluginLoadError(f"implements unknown hook(s): {', '.join(unknown)}")
    except Exception as exc:
        info.error = f"{type(exc).__name__}: {exc}"
        if strict:
            raise PluginLoadError(
                f"plugin {info.name!r} from {info.distribution or 'unknown distribution'} "
                f"failed to load: {info.error}") from exc


def _load_entry_points(
    pm: pluggy.PluginManager, blocked: set[str], strict: bool
) -> list[PluginInfo]:
    chosen = _env_list("HARNESS_PLUGINS")
    infos = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        if ep.name in blocked or (dist and dist in blocked):
            continue
        if chosen is not None and ep.name not in chosen and dist not in chosen:
            continue
        info = PluginInfo(ep.name, ep.value, dist, version, builtin=False)
        _register(pm, ep.load, info, strict)
        infos.append(info)
    return infos
