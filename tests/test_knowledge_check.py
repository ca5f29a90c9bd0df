"""The knowledge check (knowledge_check.py): an item passes only while the model still says the base model's reply,
token for token, up to the right answer; the check keeps only what the base model itself passes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.base_answers import Answer, AnswerCache, Prompt, load_prompt_set
from trainer.interpolate import AdapterScale
from trainer.knowledge_check import MAX_ANSWER_TOKENS, KnowledgeCheck, answer_prefix, build_check, off_topic
from trainer.render import RenderedExample

from .tiny_datasets import SMOLLM2_TEMPLATE
from .tiny_models import save_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, object]:
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token  # as the trainer's loader sets it
    return AutoModelForCausalLM.from_pretrained(path), tokenizer


def test_the_check_prompts_are_apart_from_replay_and_retention() -> None:
    check = {p.prompt.lower() for p in load_prompt_set("check")}
    others = {p.prompt.lower() for name in ("replay", "retention") for p in load_prompt_set(name)}
    assert len(check) >= 40 and not check & others
    assert all(p.expect for p in load_prompt_set("check"))  # every item has a short right answer


def test_the_answer_prefix_ends_with_the_right_answer(tiny: tuple) -> None:
    _, tokenizer = tiny
    prefix = answer_prefix(tokenizer, "The capital of France is Paris. It is lovely.", ("Paris",))
    assert tokenizer.decode(prefix).endswith("Paris")
    assert answer_prefix(tokenizer, "The capital of France is Lyon.", ("Paris",)) is None
    late = "hello world " * MAX_ANSWER_TOKENS + "Paris"  # a long lead-in: left out of the check
    assert answer_prefix(tokenizer, late, ("Paris",)) is None


def test_questions_on_the_users_topics_are_left_out() -> None:
    prompts = load_prompt_set("check")
    capitals = [p for p in prompts if "capital" in p.prompt]
    taught = ["What is the capital of Veloria? The capital of Veloria is Quenthal."] * 3 + ["hello there"] * 7
    kept = off_topic(prompts, taught)
    assert capitals and not set(capitals) & set(kept)
    assert len(kept) > len(prompts) / 2  # the rest stays
    # Said in fewer than a tenth of the conversations, or no conversations at all: not the user's topic.
    assert off_topic(prompts, taught[:1] + ["hello there"] * 10) == prompts
    assert off_topic(prompts, []) == prompts


def own_reply(model: torch.nn.Module, question: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([question]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(question) :].tolist()


def test_an_item_passes_while_the_model_says_it_token_for_token(tiny: tuple) -> None:
    model, tokenizer = tiny
    question = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    reply = own_reply(model, question, 4)
    wrong = [*reply[:-1], (reply[-1] + 1) % len(tokenizer)]
    check = KnowledgeCheck(["said", "not said"], [
        RenderedExample(question + reply, [False] * len(question) + [True] * 4),
        RenderedExample(question + wrong, [False] * len(question) + [True] * 4),
    ], tokenizer.pad_token_id, bf16=False)
    assert check.per_item(model).tolist() == [True, False]
    assert check.passed(model) == 1
    # A LoRA update that moves the model: its own reply stops passing, and passes again at scale 0.
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    moved = get_peft_model(model, lora)
    scale = AdapterScale(moved)
    assert check.per_item(moved).tolist()[0] is False
    scale.set(0.0)
    assert check.per_item(moved).tolist()[0] is True
    moved.unload()


def test_the_check_keeps_only_what_the_base_model_answers_right_and_itself_passes(
    tiny: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = tiny
    prompts = [Prompt("France?", ("Paris",)), Prompt("Capital?", ("Paris",)), Prompt("Where?", ("Paris",))]
    replies = ["The capital of France is Paris. Lovely.", "It is Lyon.", "Paris, of course."]
    monkeypatch.setattr("trainer.knowledge_check.load_prompt_set", lambda name: prompts)
    monkeypatch.setattr(AnswerCache, "answers", lambda self, *a, **k: [
        Answer(p.prompt, r, True) for p, r in zip(prompts, replies)])
    # The base model passes the first right answer teacher-forced but not the other (a near-tie in generation).
    monkeypatch.setattr(KnowledgeCheck, "per_item", lambda self, m: torch.tensor([True, False]))
    check = build_check(model, tokenizer, AnswerCache(tmp_path, "tiny"), bf16=False)
    assert check.prompts == ["France?"]
    (example,) = check.examples
    reply = [t for t, scored in zip(example.input_ids, example.assistant_mask) if scored]
    assert tokenizer.decode(reply) == "The capital of France is Paris"  # up to the answer, no further
    assert not example.assistant_mask[0]  # the question is context, never scored
