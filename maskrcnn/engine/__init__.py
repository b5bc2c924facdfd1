"""Training: config, data order, checkpoints, the training loop (`train.py`) and the demo.

Submodules are imported where used, so `import maskrcnn.engine.distributed` (which evaluation
needs) does not pull in the training loop.
"""
