"""Tooling on top of the library: the benchmark command and its peers (``python -m
fastsoftmax bench``), the memory-bandwidth probes, ``info`` and ``report``. Outside the kernels'
cache stamp (kernels/jit.py): changing a tool recompiles no kernel."""
