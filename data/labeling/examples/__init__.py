"""Example labelling-function files for `moat data label weak --lfs …`."""
