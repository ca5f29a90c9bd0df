"""The chat window's model, as a part of ChatScreen: loading one in a worker with progress, switching, the model
picker's list, and counting how much of the context the open conversation takes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work

from trainer.model_names import engine_name, list_local_models

from tui_chat.chat.replies import conversation_messages
from tui_chat.inference.contract import Engine, EngineError
from tui_chat.inference.endpoints import remote_models
from tui_chat.training.summary import metrics_text
from tui_chat.tui.screens.model_picker import ModelChoice
from tui_chat.tui.worker_messages import ContextCounted, ModelLoaded, ModelLoadFailed, ModelLoadProgress

if TYPE_CHECKING:
    from tui_chat.tui.screens.chat import ChatScreen

    _Base = ChatScreen
else:
    _Base = object


class ChatModel(_Base):
    """The model behind the chat window; mixed into ChatScreen."""

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, spec: str, engine: Engine | None = None) -> None:
        """Open (when given a spec) and load a model, reporting progress; the current engine stays until it is ready."""
        self.app.call_from_thread(self._loading, spec)

        def progress(what: str, fraction: float | None) -> None:
            self.post_message(ModelLoadProgress(what, fraction))

        try:
            if engine is None:
                engine = self.engine_factory(spec)
            info = engine.load(progress)
        except Exception as exc:  # shown as a notification and in the status line; the app keeps running
            self.post_message(ModelLoadFailed(spec, self.describe_error(exc)))
            return
        self.post_message(ModelLoaded(spec, engine, info))

    def _loading(self, spec: str) -> None:
        self.loading_model = spec
        self.status.show_loading(f"loading model {engine_name(spec)}…", None)
        self._update_placeholder()

    def on_model_load_progress(self, message: ModelLoadProgress) -> None:
        self.status.show_loading(f"{engine_name(self.loading_model or 'model')}: {message.what}", message.fraction)  # bar: %

    def on_model_loaded(self, message: ModelLoaded) -> None:
        switched = self.engine is not None
        self.engine, self.engine_info, self.loading_model = message.engine, message.info, None
        self.status.show_ready(message.info)
        self._update_placeholder()
        self.state.model = message.spec
        self._save_state()
        self.session.use_model(message.spec, message.engine, switched=switched)
        if switched:
            self.notify(f"Now chatting with {message.info.name} ({message.info.device}/{message.info.dtype}).")
        self.count_context()
        waiting, self._send_when_loaded = self._send_when_loaded, None
        if waiting is not None and self.prompt.text == waiting:
            self.prompt.submit()

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self.loading_model = None
        self._send_when_loaded = None  # the message stays in the box
        self.status.show_failure(f"model {message.spec} failed to load: {message.error}")  # (still on the old one)
        self._update_placeholder()
        self.notify(message.error, title=f"Model {message.spec} failed to load", severity="error", timeout=10)

    def switch_model(self, spec: str) -> None:
        if self.require_idle("switch models") and self.loading_model is None:
            self.load_model(spec.strip())
        elif self.loading_model is not None:
            self.notify(f"{engine_name(self.loading_model)} is still loading; switch once it is ready.", severity="warning")

    def local_models(self) -> list[ModelChoice]:
        """The bundled model, the trained runs in the data home and the models of the saved endpoints (asks the
        endpoints over the network: call it from a thread)."""
        descriptions = {"bundled": "the bundled SmolLM2-135M-Instruct", "model": "a model", "adapter": "an adapter"}
        runs = {run.name: run for run in self.store.list_training_runs()}
        choices = []
        for model in list_local_models(self.home.models):
            note = "" if model.ready else " (converted on first use)"
            what = descriptions.get(model.kind, model.kind)
            run = runs.get(model.name)
            if run is not None:  # a run trained here: say what from, on what, and how it measured
                measured = metrics_text(run.metrics)
                what = f"trained from {run.base_model} on {len(run.conversation_ids)} conversations" + (
                    f" · {measured}" if measured else ""
                )
            choices.append((model.name, f"{what} · {model.path}{note}"))
        return choices + remote_models(self.home.root)  # the saved endpoints' models (`tui-chat endpoints`)

    @work(thread=True, exclusive=True, group="context")
    def count_context(self) -> None:
        """How many tokens the open conversation's active branch takes (the tokenizer may be slow on long chats)."""
        engine, info, conversation = self.engine, self.engine_info, self.conversation
        if engine is None or info is None:
            return
        messages = conversation_messages(self.store, conversation.id) if conversation is not None else []
        # A chat saved before its first message (/set does that) holds none; chat templates reject an empty list.
        try:
            used = engine.count_tokens(messages) if messages else 0
        except EngineError:  # a template that refuses these messages, a model server that went away: the count
            return  # is a nicety, and the next reply says what is wrong if anything is
        self.post_message(ContextCounted(conversation.id if conversation else None, used, info.context_limit))

    def on_context_counted(self, message: ContextCounted) -> None:
        if message.conversation_id == (self.conversation.id if self.conversation else None):
            self.status.show_context(message.used, message.limit)
