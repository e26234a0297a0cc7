"""Memory access modules, one per architecture, all on the interface of ``base.py``."""
