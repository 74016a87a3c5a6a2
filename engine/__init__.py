"""Kestrel's kernel: actor runtime, supervisor, bus, clocks, messages, config and logging.

Nothing in this package imports from ``actors`` or ``adapters``; the composition root
(``kestrel.node``) is the only module that knows every concrete class.
"""
