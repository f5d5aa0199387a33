"""Value types at the bottom of the layers: desired and actual kernel objects, the directory
view, deltas and results. Imports nothing from routed_nv but itself and routed_nv.errors."""
