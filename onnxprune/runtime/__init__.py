"""Running models in onnxruntime, and comparing two of them.

- ``session``: the only onnxruntime session factory (``open_session``), runs with readable
  errors (``run_session``, ``run_model``, ``ort_message``), providers, fixed batch sizes;
- ``feeds``: what a model is fed (``InputBatch``, real inputs and their dtypes/dims, random
  inputs), sample counts, and splitting samples into batches and chunks;
- ``compare``: drift, top-1 agreement and accuracy between two models' outputs;
- ``latency``: interleaved latency of open sessions or model files;
- ``shapes``: the input sizes a run uses (``--input-shape``, the data, the declared shape or
  a default per dimension role) and random validation inputs at them;
- ``gates``: ``--min-cosine``, ``--max-drop``, ``--max-rel-diff`` checked on a validation;
- ``validate``: prune's validation (``validate``, ``ValidationResult``);
- ``compare_models``: the ``onnxprune validate`` command (``evaluate``, ``evaluate_files``,
  ``load_labels``); its table is ``report.render.render_evaluation``.

Only ``compare_models`` reads calibration files (through ``calibration.data``); the other
modules import nothing from calibration, which builds on them.
"""
