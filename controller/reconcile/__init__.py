"""Reconcile: the short periodic job that hands out due work (``tick``).

The submodules are imported by name; this package imports nothing, so a reader can
import one without the engine that ``tick`` hands work to.
"""
