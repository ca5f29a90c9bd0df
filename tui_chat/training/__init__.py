"""`/train` from inside the chat, one implementation for the REPL and the TUI.

- ``plan.plan_training``: the preview (options, snapshot export, counts, settings, time estimate, device);
  ``workload``: what the run will process (tokens, schedule, what the base model's cache lacks); ``preview``: its
  words.
- ``launch.start_training``: record the run and launch ``python -m trainer sft`` as its own process;
  ``launch.cancel_run`` stops one.
- ``monitor.RunMonitor``: follows a run's log and records its end; ``monitor.reconcile_runs`` catches up with runs
  that went on while the app was closed.
- ``summary``: progress lines, run lines and finish summaries, the same words in every front end.
- ``estimate``: the time estimate (this machine's measured runs, phase by phase) and where the trainer runs beside the chat (CPU cores, GPU
  memory); ``errors.TrainingError``: the one error, a CommandError, so front ends show it like any bad command.

Nothing here touches a screen. ``monitor``, ``summary``, ``estimate``, ``preview`` and ``errors`` import no torch
(the front ends use them at start-up); ``plan``, ``workload``, ``options`` and ``launch`` do (through the trainer's
settings), so front ends import them on use.
"""
