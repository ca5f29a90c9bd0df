"""`tui-chat serve`: an OpenAI-compatible HTTP server (Starlette on uvicorn) in front of one loaded model.

``app`` builds the Starlette app from objects passed in, ``protocol`` checks requests and writes the OpenAI response
and chunk shapes, ``stop_strings`` cuts replies at stop strings, ``scheduler`` runs one request at a time on the
loaded model, ``catalog`` says which model names the server answers to, ``server`` runs it all on uvicorn,
``request_log`` keeps requests as conversations (`--log`), and ``local`` finds or starts the data home's own server
for the front ends (it alone is imported by them: httpx, no Starlette, no torch).
Imports ``inference``, ``sessions`` and ``trainer``; no front end, not the chat core.
"""
