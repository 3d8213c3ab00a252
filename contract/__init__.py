"""The facts both sides of every join need, written once: the bundle format (trainer → serving), the sampling
contract (one sampler over a backend), the image/mask codec and occlusions (serving ↔ clients ↔ evaluation),
atomic file writes and sha256, and the config-to-flags builder every entry point uses.

numpy, Pillow and the standard library only: it imports no other package of this project, and every one of
them may import it (tests/test_imports.py holds both rules).
"""
