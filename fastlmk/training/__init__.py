"""fastlmk.training: the model and its training (the layer between the ops and the tools).

* :mod:`~fastlmk.training.config` -- ``TrainConfig``: every setting of a run, typed, with its
  defaults, presets, command-line parsing and validation (the one place for each).
* :mod:`~fastlmk.training.model` -- ``Detector``, ``Generator`` and ``LandmarkAutoencoder`` (the
  method's passes); each is built from a config with ``from_config``.
* :mod:`~fastlmk.training.losses` -- the reconstruction loss and the optional [ours] terms;
  ``TrainingLoss.from_config`` is the loss of one step.
* :mod:`~fastlmk.training.checkpoint` -- atomic checkpoint files; ``load_detector``.
* :mod:`~fastlmk.training.loop` -- ``train(cfg)``: the training loop, with its bookkeeping in
  :mod:`~fastlmk.training.logbook` and its run directories in :mod:`~fastlmk.training.rundir`.

``python -m fastlmk.train`` is the command line of this layer.
"""
