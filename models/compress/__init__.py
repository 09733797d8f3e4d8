"""Model compression: TFLite post-training quantization, pruning, clustering, QAT and distillation, compared in one
report (`moat compress`). See base.py for the shared config, context and Variant."""
