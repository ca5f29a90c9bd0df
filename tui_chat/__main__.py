from tui_chat.cli import main

main()
