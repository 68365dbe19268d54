"""Runs: the TOML run config, the run folder and its manifest, the saved ensemble, the staged pipeline.

* :mod:`.config`: ``catdog-features run CONFIG.toml`` parsed and validated (:class:`RunConfig`;
  value validators in :mod:`.values`, ``--set`` overrides in :mod:`.overrides`);
* :mod:`.paths`: paths read from files stay inside their folder;
* :mod:`.rundir`: the run folder layout and ``manifest.json`` (:class:`RunDir`);
* :mod:`.saved`: ``ensemble.json`` (:class:`SavedEnsemble`);
* :mod:`.predict`: a run's features, predictions of new images, its submission;
* :mod:`.pipeline`: the stages extract -> sweep -> OOF ensemble -> submission -> report.
"""
