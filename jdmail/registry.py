"""The only caller of twisted.plugin.getPlugins: finds, verifies and indexes
component factories by kind.

Twisted swallows a plugin module's import error into the log; we keep a list of
the modules that failed so a "no such kind" message can name them.
"""

import os

from twisted.logger import Logger
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject
from zope.interface.exceptions import Invalid

from jdmail.interfaces import IDirectoryFactory, IFilterFactory, IStoreFactory

log = Logger()

KINDS = {"directory": IDirectoryFactory, "store": IStoreFactory, "filter": IFilterFactory}

_index = None          # kind -> {name: factory}
_problems = []         # one line per plugin that failed to load or verify


class RegistryError(Exception):
    """Two plugins claim the same name, or a plugin does not provide its interface."""


def add_plugin_dirs(dirs):
    """Make each directory's ``jdmail/plugins/`` (or the directory itself, when it holds
    plugin modules directly) part of the jdmail.plugins package."""
    import jdmail.plugins
    global _index
    for d in dirs:
        d = os.path.abspath(os.path.expanduser(d))
        nested = os.path.join(d, "jdmail", "plugins")
        path = nested if os.path.isdir(nested) else d
        if path not in jdmail.plugins.__path__:
            jdmail.plugins.__path__.append(path)
            _index = None


def _load():
    import jdmail.plugins
    global _index
    if _index is not None:
        return _index
    index = {kind: {} for kind in KINDS}
    del _problems[:]
    _capture = []

    def observer(event):
        if event.get("log_failure") is not None:
            _capture.append(event)

    from twisted.logger import globalLogPublisher
    globalLogPublisher.addObserver(observer)
    try:
        for kind, iface in KINDS.items():
            for factory in getPlugins(iface, jdmail.plugins):
                origin = getattr(type(factory), "__module__", "?")
                try:
                    verifyObject(iface, factory)
                except Invalid as e:
                    _problems.append(f"{origin}: does not provide {iface.__name__}: {e}")
                    continue
                name = factory.kind
                if name in index[kind] and index[kind][name] is not factory:
                    other = type(index[kind][name]).__module__
                    raise RegistryError(f"two {kind} plugins are named {name!r}: {other} and {origin}")
                index[kind][name] = factory
    finally:
        globalLogPublisher.removeObserver(observer)
    for event in _capture:
        _problems.append(_describe_failure(event["log_failure"]))
    _index = index
    return index


def _describe_failure(failure):
    """'FILE: ExcType: message' for a plugin module that failed to import."""
    where = getattr(failure.value, "filename", None)
    if not where:
        files = [frame[1] for frame in failure.frames if "importlib" not in frame[1]]
        where = files[-1] if files else "?"
    return f"{where}: {failure.type.__name__}: {failure.getErrorMessage()}"


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
