"""Kestrel's command line and composition root (``kestrel.node``)."""
