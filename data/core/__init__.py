"""The foundation every stage needs: environment (env), typed errors, config dataclasses ⇄ YAML, atomic writes.

It sits in the lowest layer so that data/, models/ and app/ all import down to it; serving/ has its own errors
and needs none of it.
"""
