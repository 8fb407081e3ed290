"""Lever-Plus: learn which in-context demonstrations to show a vision-language model.

Modules are one per pipeline stage; nothing here does I/O or heavy imports at import time.
"""

__version__ = "0.1.0"
