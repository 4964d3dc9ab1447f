"""isicflow: shared core of the data engine and the trainers.

Kept separate from `proto/` (which holds only .proto sources) because apache-beam imports a
module named `proto` (from proto-plus) that a package of ours must not shadow.
"""
