"""Running models in onnxruntime, and comparing two of them.

- ``session``: the only onnxruntime session factory (``open_session``), runs with readable
  errors (``run_session``, ``run_model``, ``ort_message``), providers, fixed batch sizes;
- ``feeds``: what a model is fed (``InputBatch``, real inputs and their dtypes/dims, random
  inputs), sample counts, and splitting samples into batches and chunks;
- ``compare``: drift, top-1 agreement and accuracy between two models' outputs;
- ``latency``: interleaved latency of open sessions or model files;
- ``validate``: prune's validation (``validate``) and the ``onnxprune validate`` command
  (``evaluate``, ``evaluate_files``, ``render_evaluation``).

``session``, ``feeds``, ``compare`` and ``latency`` import nothing from calibration (which
builds on them); ``validate`` reads calibration files through ``calibration.data``.
"""
