# mcutrain on the device: the C engine (_mcutrain) plus helpers that are easier in Python.
from _mcutrain import dot, perf_counter, version, PERF_UNIT

__version__ = version()
