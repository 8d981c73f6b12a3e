"""The only caller of twisted.plugin.getPlugins: finds, verifies and indexes
component factories by kind.

Twisted swallows a plugin module's import error into the log; we keep a list of
the modules that failed so a "no such kind" message can name them.
"""

import os
import sys

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject
from zope.interface.exceptions import Invalid

from jdmail.interfaces import IDirectoryFactory, IFilterFactory, IStoreFactory
from jdmail.options import Option

log = Logger()

KINDS = {"directory": IDirectoryFactory, "store": IStoreFactory, "filter": IFilterFactory}

_index = None          # kind -> {name: factory}
_problems = []         # one line per plugin that failed to load or verify


class RegistryError(Exception):
    """Two plugins claim the same name, or a plugin does not provide its interface."""


def _plugin_path(d):
    d = os.path.realpath(os.path.abspath(os.path.expanduser(d)))
    nested = os.path.join(d, "jdmail", "plugins")
    return nested if os.path.isdir(nested) else d


def add_plugin_dirs(dirs):
    """Make each directory's ``jdmail/plugins/`` (or the directory itself, when it holds
    plugin modules directly) part of the jdmail.plugins package."""
    import jdmail.plugins
    global _index
    for d in dirs:
        path = _plugin_path(d)
        if path not in jdmail.plugins.__path__:
            jdmail.plugins.__path__.append(path)
            _index = None


def remove_plugin_dirs(dirs):
    """Undo add_plugin_dirs (for tests): forget the directories and the modules loaded
    from them."""
    import jdmail.plugins
    global _index
    for d in dirs:
        path = _plugin_path(d)
        while path in jdmail.plugins.__path__:
            jdmail.plugins.__path__.remove(path)
        for name, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None) or ""
            if name.startswith("jdmail.plugins.") and os.path.dirname(os.path.realpath(where)) == path:
                del sys.modules[name]
    _index = None


def load():
    """Find, verify and index every plugin now (normally done on first use).
    Raises RegistryError when two plugins claim one name."""
    _load()


def _check_factory(kind, iface, factory, origin):
    """Problems with one factory, beyond verifyObject: a usable kind and options."""
    name = getattr(factory, "kind", None)
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        return f"{origin}: its {kind} factory's kind {name!r} is not a usable name"
    options = getattr(factory, "options", None)
    if not isinstance(options, dict):
        return f"{origin}: the {kind} plugin {name!r} has options {type(options).__name__}, not a dict"
    bad = [k for k, v in options.items() if not isinstance(k, str) or not isinstance(v, Option)]
    if bad:
        return (f"{origin}: the {kind} plugin {name!r} declares options that are not "
                f"jdmail.options.Option: {', '.join(map(repr, bad))}")
    return None


def _origin(factory):
    module = sys.modules.get(getattr(type(factory), "__module__", ""), None)
    return getattr(module, "__file__", None) or getattr(type(factory), "__module__", "?")


def _load():
    import jdmail.plugins
    global _index
    if _index is not None:
        return _index
    index = {kind: {} for kind in KINDS}
    problems = []
    import twisted.plugin
    real_log = twisted.plugin.log
    shim = _PluginLog(real_log)
    twisted.plugin.log = shim        # import errors become one line each, not tracebacks
    try:
        for kind, iface in KINDS.items():
            for factory in getPlugins(iface, jdmail.plugins):
                origin = _origin(factory)
                try:
                    verifyObject(iface, factory)
                except Invalid as e:
                    problems.append(f"{origin}: does not provide {iface.__name__}: {' '.join(str(e).split())}")
                    continue
                problem = _check_factory(kind, iface, factory, origin)
                if problem:
                    problems.append(problem)
                    continue
                name = factory.kind
                if name in index[kind] and index[kind][name] is not factory:
                    raise RegistryError(f"two {kind} plugins are named {name!r}: "
                                        f"{_origin(index[kind][name])} and {origin}")
                index[kind][name] = factory
    finally:
        twisted.plugin.log = real_log
    captured = shim.failures
    for failure in captured:
        problems.append(_describe_failure(failure))
    # getPlugins runs once per kind, so a module that fails to import fails each time
    _problems[:] = list(dict.fromkeys(problems))
    for line in _problems:
        log.warn("plugin problem: {problem}", problem=line)
    _index = index
    return index


class _PluginLog:
    """Stands in for twisted.plugin's ``log`` while plugins load: Twisted reports a
    plugin module that fails to import with ``log.err()`` (a traceback, printed to
    stderr before logging starts); we keep the failure to report it as one line."""

    def __init__(self, real):
        self._real = real
        self.failures = []

    def err(self, _stuff=None, _why=None, **kw):
        from twisted.python.failure import Failure
        self.failures.append(_stuff if isinstance(_stuff, Failure) else Failure(_stuff))

    def __getattr__(self, name):
        return getattr(self._real, name)


def _describe_failure(failure):
    """'FILE: ExcType: message' for a plugin module that failed to import."""
    where = getattr(failure.value, "filename", None)
    if not where:
        import jdmail.plugins
        dirs = [os.path.realpath(p) for p in jdmail.plugins.__path__]
        files = [frame[1] for frame in failure.frames if "importlib" not in frame[1]]
        ours = [f for f in files if os.path.dirname(os.path.realpath(f)) in dirs]
        where = (ours or files or ["?"])[-1]
    message = " ".join(failure.getErrorMessage().split())
    return f"{where}: {failure.type.__name__}: {message}"


def find(kind, name):
    """The factory of ``kind`` ('directory', 'store', 'filter') named ``name``, or None."""
    return _load()[kind].get(name)


def factories(kind):
    """{name: factory} for one kind."""
    return dict(_load()[kind])


def unknown_message(kind, name):
    """The admin's sentence for a kind nobody provides."""
    known = ", ".join(sorted(_load()[kind])) or "none"
    text = f"{name!r}: no {kind} plugin has that name (available: {known})"
    if _problems:
        text += "; plugins that failed to load: " + "; ".join(_problems)
    return text


def problems():
    """Lines describing plugin modules that failed to import or verify."""
    _load()
    return list(_problems)
