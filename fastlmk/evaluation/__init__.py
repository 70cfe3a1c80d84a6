"""fastlmk.evaluation: measuring a detector (a user tool; ``python -m fastlmk.evaluate`` is its
command line, and ``fastlmk.evaluate`` re-exports the public names below).

* :mod:`~fastlmk.evaluation.protocol` -- the protocol of method.md section 6 on points: linear
  regressors (IMM / SAIC variants), N-shot rows, backward error, mean-shape baseline.
* :mod:`~fastlmk.evaluation.supervised` -- the supervised upper bound (its own small training
  loop and its own, stated, settings).
* :mod:`~fastlmk.evaluation.report` -- eval.md / eval.json / eval.png.
* :mod:`~fastlmk.evaluation.pipeline` -- ``evaluate_detector``: a detector end to end.
"""
