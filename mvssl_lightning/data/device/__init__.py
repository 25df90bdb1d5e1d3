"""Batched, per-sample-random view augmentation on any device (the ``gpu_views`` path).

Modules:

- ``step``: the ``DeviceStep`` protocol (sample on the CPU, apply anywhere); ``color``, ``geometry``,
  ``randaugment``: the steps.
- ``decode``: raw batches from the workers, batched JPEG decoding on the device.
- ``pipeline``: ``DeviceView`` / ``DeviceViews``, a compiled multi-view recipe.
- ``registry``: the compiler's dispatch tables (``register_device_transform``,
  ``register_device_recipe``); ``builtin``: the entries of torchvision's and lightly's transforms.
- ``recipe``: ``compile_view`` / ``compile_views``, CPU recipe -> ``DeviceViews``.
- ``stage``: ``DeviceViewStage``, what the data module hands its training batches to: the compiled
  recipe, where JPEGs are decoded, and the views' per-rank generator with its checkpoint state.

Nothing here imports the view recipes (``mvssl_lightning.data.views``): each recipe family registers
its own transforms and multi-view containers with the registry when it is imported.
"""
