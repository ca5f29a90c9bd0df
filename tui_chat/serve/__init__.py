"""`tui-chat serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) in front of one loaded model.

``app`` builds the Starlette app from objects passed in, ``protocol`` validates requests and writes the OpenAI response
and chunk shapes, ``stop_strings`` cuts replies at stop strings, ``scheduler`` runs one request at a time on the
loaded model, ``catalog`` says which model names the server answers to, ``server`` runs it all on uvicorn. Imports ``inference.contract`` and
``trainer.model_names``; never the CLI, a front end or the store (conversations sent here are not stored yet).
"""
