"""Named components: what each plugin's registration hooks register, checked as it comes.

Each registration hook implementation gets its own ``register`` callback, so a problem
names the plugin: a name registered twice (both plugins named), an invalid name, or a
class that does not satisfy its kind's contract (:func:`harness.contracts.check_component`).
A rejected class is not registered; the problem is reported by ``harness plugins`` and,
as a one-line error, by ``harness validate`` and ``harness run``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from harness.contracts import check_component
from harness.hookspecs import REGISTRATION_HOOKS

#: a component name: ``lora``, ``my-eval``, or namespaced ``package/name``
COMPONENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")

COMPONENT_KINDS = tuple(REGISTRATION_HOOKS)


@dataclass(frozen=True)
class Registration:
    """A named component and the plugin that registered it."""

    kind: str
    name: str
    cls: Any
    plugin: str


Registry = dict[str, dict[str, Registration]]


def collect(pm: pluggy.PluginManager, *, trace: bool,
            on_registered: Callable[[str, str, str], None],
            on_error: Callable[[str, str], None]) -> tuple[Registry, list[str]]:
    """Call every registration hook implementation; returns the registry and the problems.

    ``on_registered(plugin, kind, name)`` is told of each accepted component and
    ``on_error(plugin, message)`` of each problem a plugin caused.
    """
    registry: Registry = {kind: {} for kind in COMPONENT_KINDS}
    problems: list[str] = []

    def reject(plugin: str, message: str) -> None:
        problems.append(message)
        on_error(plugin, message)

    for kind, hook_name in REGISTRATION_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(name: str, cls: Any, *, _kind: str = kind, _plugin: str = plugin) -> None:
                if not isinstance(name, str) or not COMPONENT_NAME.match(name):
                    problems.append(
                        f"plugin {_plugin!r} registered a {_kind} with an invalid name "
                        f"{name!r} (letters, digits, '.', '_', '-', one '/' for a namespace)")
                    return
                previous = registry[_kind].get(name)
                if previous is not None:
                    reject(_plugin, f"{_kind} {name!r} is registered twice: by plugin "
                                    f"{previous.plugin!r} and by plugin {_plugin!r}")
                    return
                contract = check_component(_kind, cls)
                if contract:
                    reject(_plugin, f"plugin {_plugin!r} registered {_kind} {name!r}: "
                                    + "; ".join(contract))
                    return
                registry[_kind][name] = Registration(_kind, name, cls, _plugin)
                on_registered(_plugin, _kind, name)

            if trace:
                sys.stderr.write(f"harness: calling {hook_name} of plugin {plugin!r}\n")
            try:
                impl.function(register=register)
            except Exception as exc:  # a misbehaving plugin must not take the CLI down
                on_error(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}")
    return registry, problems
