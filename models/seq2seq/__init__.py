"""The translation Transformer's life cycle: data (subword vocabulary, verse pairs), train (teacher forcing, BLEU
against baselines, resume), decoding (greedy and beam search with a key/value cache), export (strings in,
strings out SavedModel), bench. The model itself is models/transformer.py, shared with the BERT encoder."""
