"""Labelling tools: label quality, weak supervision, active learning and augmentation (`moat data label …`).

One role per module: `baseline` (a fast hashed bag-of-words classifier), `quality` (conflicts, agreement,
confidence, likely-mislabeled), `weak` (labelling functions + a label model), `active` (uncertainty sampling,
export for annotation, merge back), `augment` (EDA with embedding-neighbour synonyms), `cli` (the verbs).
"""
