"""The Textual chat window: the app, its stylesheet, screens and widgets. Widgets post messages; screens act through
the chat core. This process never imports torch: the model runs in its own process."""
