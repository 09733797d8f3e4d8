"""Sequential recommendation on moatkit's Transformer layers: SASRec-style causal and BERT4Rec-style masked next-item
models, baselines, full-ranking evaluation, and a SavedModel that returns the top-k items for a history."""
