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
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from harness import PROJECT_NAME, __version__, hookspecs
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.components import Alert
    from harness.runner import CellOutcome, CellPlan, RunInfo, RunSummary

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

COMPONENT_KINDS = tuple(hookspecs.REGISTRATION_HOOKS)

#: a component name: ``lora``, ``my-eval``, or namespaced ``package/name``
COMPONENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


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


@dataclass(frozen=True)
class Registration:
    """A named component and the plugin that registered it."""

    kind: str
    name: str
    component: Any
    plugin: str


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class PluginHost:
    """Typed facade over the plugin manager.

    Create one with :meth:`load`; tests build one with ``extra_plugins`` and
    ``entry_points=False`` to stay isolated from what is installed.
    """

    def __init__(self, pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self._infos = infos
        self._registry: dict[str, dict[str, Registration]] | None = None
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
            module = importlib.import_module(module_name)
            pm.register(module, name=name)
            infos[name] = PluginInfo(name, module_name, PROJECT_NAME, __version__, builtin=True)

        if entry_points:
            for info in _load_entry_points(pm, blocked, strict):
                infos[info.name] = info

        for plugin in extra_plugins:
            # a readable name (module or class) rather than pluggy's id()-based one
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            if pm.register(plugin, name=name) is not None:
                infos[name] = PluginInfo(
                    name, getattr(plugin, "__module__", None), None, None, builtin=False
                )

        if _env_flag("HARNESS_TRACE_PLUGINS"):
            pm.trace.root.setwriter(sys.stderr.write)
            pm.enable_tracing()
        host = cls(pm, infos)
        host.strict = strict
        if strict:
            host.registry()  # a raising registration hook is fatal too
            failed = [info for info in infos.values() if info.error]
            if failed:
                raise PluginLoadError(*(f"plugin {i.name!r}: {i.error}" for i in failed))
        return host

    # -- components -------------------------------------------------------------

    def registry(self, *, check: bool = True) -> dict[str, dict[str, Registration]]:
        """Every registered component, by kind and name (collected once).

        With ``check`` (the default), raises :class:`UserError` naming the plugins
        if a name was registered twice or is not a valid component name.
        """
        if self._registry is None:
            self._registry = self._collect_registrations()
        if check and self._registration_problems:
            raise UserError(*self._registration_problems)
        return self._registry

    def _collect_registrations(self) -> dict[str, dict[str, Registration]]:
        registry: dict[str, dict[str, Registration]] = {kind: {} for kind in COMPONENT_KINDS}
        problems: list[str] = []
        trace = _env_flag("HARNESS_TRACE_PLUGINS")
        for kind, hook_name in hookspecs.REGISTRATION_HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            # Each implementation gets its own ``register`` so that a duplicate
            # name can name both plugins; pluggy's own call would hide who
            # registered what.
            for impl in hook.get_hookimpls():
                plugin = impl.plugin_name

                def register(name: str, component: Any, *, _kind=kind, _plugin=plugin) -> None:
                    if not isinstance(name, str) or not COMPONENT_NAME.match(name):
                        problems.append(
                            f"plugin {_plugin!r} registered a {_kind} with an invalid name "
                            f"{name!r} (letters, digits, '.', '_', '-', one '/' for a namespace)"
                        )
                        return
                    previous = registry[_kind].get(name)
                    if previous is not None:
                        problems.append(
                            f"{_kind} {name!r} is registered twice: by plugin "
                            f"{previous.plugin!r} and by plugin {_plugin!r}"
                        )
                        self._note_error(_plugin, problems[-1])
                        return
                    registry[_kind][name] = Registration(_kind, name, component, _plugin)
                    info = self._infos.get(_plugin)
                    if info is not None:
                        info.components.setdefault(_kind, []).append(name)

                if trace:
                    sys.stderr.write(f"harness: calling {hook_name} of plugin {plugin!r}\n")
                try:
                    impl.function(register=register)
                except Exception as exc:  # a misbehaving plugin must not take the CLI down
                    self._note_error(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}")
        self._registration_problems = problems
        return registry

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

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry()[kind])

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
            except Exception as exc:  # an observer's bug must not cost the run
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
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or []
                             if caller.spec is None)
            if unknown:
                pm.unregister(plugin)
                raise PluginLoadError(f"implements unknown hook(s): {', '.join(unknown)}")
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            if strict:
                raise PluginLoadError(
                    f"plugin {ep.name!r} from {dist or 'unknown distribution'} failed to load: "
                    f"{info.error}"
                ) from exc
        infos.append(info)
    return infos
