"""The learning-quality benchmark: every method against lightly-built baselines, on the same budget.

Run it as ``python -m benchmarks.quality`` (``--help`` for the options). Modules:

- ``__main__``: the command line, the training of every model and the results files;
- :mod:`~benchmarks.quality.recipes`: how each model is built (methods from their shipped configs,
  baselines from ``benchmarks.lightly_models``) under the shared budget;
- :mod:`~benchmarks.quality.features`: the frozen features of the final validation and the collapse check;
- the offline linear probe on those features is the library's
  (:func:`mvssl_lightning.core.probe.linear_probe`);
- :mod:`~benchmarks.quality.report` and :mod:`~benchmarks.quality.chart`: the markdown table and the PNG chart.

Importing the package imports nothing else (matplotlib, in particular, is only loaded to draw a chart).
"""
