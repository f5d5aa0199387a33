"""`routed-nv bench`: routed_nv against bridged VXLAN overlays and the plain underlay, in one lab.

Pure parts (packet overhead, state formulas, parsers, results) import nothing from the lab, so
they are cheap to unit-test; the runners build the variants on a `routed_nv.lab` Lab.
"""
