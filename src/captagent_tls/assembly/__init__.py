"""The assembly of a run, shared by every way of running: the keys and key sources, the
outputs, and the pipeline with its application stages, made from the run's settings.

The command line (:mod:`captagent_tls.cli`) only parses and dispatches; :mod:`captagent_tls.runs`
runs a job in one process or as the parent of worker processes, and each worker
(:mod:`captagent_tls.workers.worker`) builds its pipeline here too, so a change to how a run is
put together has one home.
"""
