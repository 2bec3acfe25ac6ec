"""The application: ``python -m iostream`` (kernel, install, uninstall, demo, compare).

This subpackage is the application, not the library. The library (:mod:`iostream` and
every module outside ``iostream.app``) never imports it; the dependency runs one way,
from the application to the library's public names.
"""
