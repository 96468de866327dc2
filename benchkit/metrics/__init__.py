"""Metrics: feature networks, generation quality (torch-fidelity + clean-fid), reconstruction, cost, sanity checks.

Import the submodule you need (torch-fidelity and clean-fid import torchvision, which takes seconds, so nothing
is imported here):

- ``features``: ``load_extractor`` and the FEATURES registry entries ``inception``, ``dataset``, ``auto``.
- ``quality``: ``generation_metrics``, ``reference_stats``, ``fid_infinity``.
- ``recon``: ``psnr``, ``ssim``, ``codebook_usage``, ``bits_per_image``.
- ``perceptual``: ``load_lpips``, ``lpips_per_image``, ``lpips_loss`` (LPIPS, optional: local weights only).
- ``cost``: ``count_params``, ``flops_per_call``, ``throughput``, ``latency``, ``peak_memory_mb``,
  ``matmul_peak_flops``.
- ``battery``: ``run_battery``, ``check_requirements`` (the distortion battery of a feature network).
- ``sanity``: ``sanity_battery``, ``save_sanity`` (``benchkit eval --sanity``).
"""
