"""jdmail's plugin package: built-in and dropped-in components register here.

Any ``jdmail/plugins/`` directory on sys.path is part of this package, and so is
each ``[jdmail] plugin_dirs`` entry (jdmail.registry adds those).
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
