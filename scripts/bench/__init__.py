"""The sections of ``scripts/benchmark.py``, one module each.

``common`` (environment, timing and formatting helpers), ``workloads`` (models, data and timed
``fit`` of sections 1 and 5), ``throughput`` (sections 1 and 4), ``callback_share`` (section 2; ``config_fits`` builds its fits from
shipped configs and times their parts),
``ig_memory`` (section 3), ``teacher_cache`` (section 5), ``lm_memory`` (section 6), ``compression``
(section 7) and ``main`` (arguments, the table).
Every section module offers ``run(...)`` (the measurements), ``rows(...)`` (its table rows) and
``notes(...)`` (the lines under the table).
"""
