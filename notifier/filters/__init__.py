"""Filter kinds: each turns a watcher's text into the part the user cares about.

A kind is one class ``class X(Filter, kind="name")`` (the base is notifier.kinds.Filter) in a
module of this package, grouped by family (text, html, json). In `watchers.yaml` a filter is
written as ``- strip``, ``- css: "div.price"`` (the value goes to the kind's `shorthand`
option) or ``- regex: {pattern: ..., replace: ...}``.
"""

from notifier.kinds import import_package

import_package(__name__, __path__)
