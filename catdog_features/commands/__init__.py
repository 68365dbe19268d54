"""One module per ``catdog-features`` sub-command (see :mod:`catdog_features.cli`).

Keep top-level imports here to the standard library: ``--help`` must not import TensorFlow.
"""
