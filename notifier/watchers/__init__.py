"""Watcher kinds: each fetches one thing (a URL, a file, a command's output) as text.

A kind is one module in this package with one class ``class X(Watcher, kind="name")`` (the
base is notifier.kinds.Watcher); importing the package imports every module, which
registers the kinds.
"""

from notifier.kinds import import_package

import_package(__name__, __path__)
