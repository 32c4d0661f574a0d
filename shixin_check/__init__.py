"""shixin-check: point-of-sale checks against the court list of dishonest judgment debtors.

The wheel installs this package (server, loader, clients, domain: every
hand-written module; the console entry point is ``shixin_check.cli``) and
``shixin`` (the generated stubs of the ``shixin.v1`` proto package).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("shixin-check")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
