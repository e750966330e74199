"""Reconcile: the short periodic job that hands out due work (``tick``), and how a
reader tells that nothing has run it for a while (``stalled``).

The submodules are imported by name; this package imports nothing, so a view can
import ``stalled`` without the engine that ``tick`` hands work to.
"""
