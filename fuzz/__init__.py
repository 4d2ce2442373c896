"""Fuzzing captagent-tls: atheris targets for each parser and for the whole offline pipeline.

``python -m fuzz.run --help`` runs them; README.md ("Fuzzing") says how to run a long
campaign.  The oracle of the pipeline target is described in :mod:`fuzz.oracle`.
"""
