"""Calibration data and what is read from it.

- ``data``: inputs from the user's files (``load_calibration``) or random (``make_inputs``);
- ``preprocess``: image preprocessing specs (``parse_preprocess``, ``Preprocess``);
- ``stats``: activations tapped batch by batch (``tapped_model``, ``run_taps``), per-channel
  statistics (``channel_stats``, ``ChannelStats``) and Wanda scores (``wanda_scorer``).

Sessions, feeds and batches come from ``onnxprune.runtime``.
"""
