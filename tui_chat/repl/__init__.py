"""The line-oriented front end: `tui-chat repl` (prompt-toolkit, or plain lines without a terminal) and the console
output it shares with `tui-chat ask` (streamed Markdown, load progress, keeping ^C out of replies)."""
