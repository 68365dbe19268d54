"""Runs: the TOML run config, the run folder and its manifest, the staged pipeline.

* :mod:`.config`: ``catdog-features run CONFIG.toml`` parsed and validated (:class:`RunConfig`);
* :mod:`.rundir`: the run folder layout and ``manifest.json`` (:class:`RunDir`);
* :mod:`.pipeline`: extract -> sweep -> OOF ensemble -> submission -> report.
"""
