"""Watching served text models: a reference profile written at export, the server's prediction logs read back,
drift detectors over windows of logged requests, label-free accuracy estimates, realised accuracy from feedback,
and their outputs (report.json + HTML, Prometheus gauges, TensorBoard scalars).

Like the rest of serving/, nothing here imports moatkit's training code: it reads SavedModels and log files.
"""
