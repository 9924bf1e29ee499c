"""The training recipes, shipped in the wheel as ``trl_mars.recipes`` (``trl_mars/recipes`` links to this folder).

Each module has a ``main()`` that reads ``--config FILE`` plus command-line overrides (its default YAML under
``configs/`` otherwise). Run one with ``trl-mars train <method>``, ``accelerate launch -m trl_mars.recipes.<method>``
or, from a checkout, ``accelerate launch recipes/<method>.py``; ``accelerate_configs/`` holds launcher configs.
"""
