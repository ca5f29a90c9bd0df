"""`/train` from inside the chat, one implementation for the REPL and the TUI.

- ``plan.plan_training``: the preview (options, snapshot export, counts, settings, time estimate, device).
- ``launch.start_training``: record the run and launch ``python -m trainer sft`` as its own process;
  ``launch.cancel_run`` stops one.
- ``monitor.RunMonitor``: follows a run's log and records its end; ``monitor.reconcile_runs`` catches up with runs
  that went on while the app was closed.
- ``summary``: progress lines, run lines and finish summaries, the same words in every front end.

Nothing here touches a screen. ``monitor`` and ``summary`` import no torch (the front ends use them at start-up);
``plan``, ``options`` and ``launch`` do (through the trainer's settings), so front ends import them on use.
"""
