"""Replay, retention, recall and the automatic schedule, on a tiny model (fast) and the shipped prompt sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer import base_answers as answers_module
from trainer.__main__ import main as trainer_main
from trainer.config import DISTILLED_REPLAY_SENTENCES, SFTConfig
from trainer.progress import ProgressReporter
from trainer.sft import run_sft
from trainer.answer_match import contains_answer, rouge_l
from trainer.base_answers import (
    Answer,
    AnswerCache,
    AnswerSettings,
    greedy_answers,
    load_prompt_set,
    model_fingerprint,
    model_identity,
)
from trainer.chat_template import ensure_chat_template
from trainer.data import DataError
from trainer.recall import Probe, evaluate_recall, probes_from_corrections, read_probes, write_probes
from trainer.replay import (
    default_replay_count,
    first_sentences,
    replay_conversations,
    replay_for_run,
    replay_order,
    replay_prompts,
    usable_reply,
)
from trainer.retention import (
    ROUGE_THRESHOLD,
    RetentionItem,
    RetentionResult,
    baseline_cached,
    evaluate_retention,
    measure_baseline,
    report_section,
)
from trainer.schedule import auto_schedule, preference_epochs

from .tiny_models import save_tiny_model
from .tiny_datasets import can_replay_answers, chat_lines, write_jsonl


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(path))
    return AutoModelForCausalLM.from_pretrained(path), tokenizer


# -- the shipped prompt sets


def test_prompt_sets_are_large_mixed_and_disjoint() -> None:
    replay = [p.prompt for p in load_prompt_set("replay")]
    retention = load_prompt_set("retention")
    assert 250 <= len(replay) == len(set(replay))
    assert 40 <= len(retention) <= 60
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in replay)
    assert 0.15 <= chinese / len(replay) <= 0.25
    assert not set(replay) & {p.prompt for p in retention}
    facts = [p for p in retention if p.expect]
    assert len(facts) >= 20 and any(p.prompt == "What is the capital of France?" for p in facts)
    # The replay order is fixed and mixes kinds: the first 20 are not all from one part of the file.
    first = [p.prompt for p in replay_prompts()[:20]]
    assert first == [p.prompt for p in replay_prompts()[:20]]
    assert len({replay.index(p) // 50 for p in first}) >= 4


def test_half_the_replay_is_on_the_users_topics() -> None:
    prompts = replay_prompts()
    taught = [
        "What is the capital of Veloria?", "The capital of Veloria is Quenthal, a port city.",
        "Which city is the capital of Veloria?", "Quenthal is the capital of Veloria.",
        "Who invented the glimmerphone?", "Dr. Mirela Vantosk invented it.",
    ]
    order = replay_order(prompts, taught)
    assert sorted(p.prompt for p in order) == sorted(p.prompt for p in prompts)  # a reordering, nothing lost
    near, rest = order[0:20:2], order[1:20:2]
    assert sum("capital" in p.prompt for p in near) >= 6 and any("invent" in p.prompt for p in near)
    positions = [prompts.index(p) for p in rest]
    assert positions == sorted(positions) and not set(rest) & set(near)  # the others keep the fixed shuffled order
    # Function words do not make a topic ("tell me", "what is it called"), and no data keeps the fixed order.
    assert replay_order(prompts, ["Tell me what it is called, please."]) == prompts
    assert replay_order(prompts, []) == prompts
    assert replay_order(prompts, ["请问北京是哪个国家的首都？"])[0].prompt != prompts[0].prompt  # Chinese too


# -- matching answers


def test_contains_answer_matches_whole_words_and_normalises() -> None:
    assert contains_answer("The capital of France is Paris.", ["paris"])
    assert not contains_answer("Parisian food", ["Paris"])
    assert contains_answer("It is 4.", ["4", "four"]) and not contains_answer("It is 40.", ["4"])
    assert contains_answer("The formula is H₂O", ["H2O"])  # subscript digits normalised
    assert contains_answer("法国的首都是巴黎。", ["巴黎"])
    assert not contains_answer("nothing here", ["", "Paris"])


def test_rouge_l_counts_chinese_characters() -> None:
    assert rouge_l("The capital of France is Paris.", "The capital of France is Paris.") == 1.0
    assert rouge_l("法国的首都是巴黎", "法国的首都是巴黎") == 1.0  # rouge-score's own tokenizer scores this 0
    assert 0 < rouge_l("法国的首都是巴黎", "巴黎是法国的首都") < 1
    assert rouge_l("completely different", "nothing shared") == 0.0


# -- base answers and their cache


def test_greedy_answers_batched_match_one_by_one(tiny) -> None:
    model, tokenizer = tiny
    prompts = ["hello", "What is the capital of France? The capital", "the quick brown fox jumps"]
    settings = AnswerSettings(max_new_tokens=6, bf16=False, batch_size=3)
    batched = greedy_answers(model, tokenizer, prompts, settings)
    single = [greedy_answers(model, tokenizer, [p], settings)[0] for p in prompts]
    assert [a.prompt for a in batched] == prompts
    assert [a.reply for a in batched] == [a.reply for a in single]
    assert tokenizer.padding_side == "right"  # restored after generating


def test_base_answers_are_cached_and_extended(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = tiny
    cache = AnswerCache.of(model, tokenizer, tmp_path)
    prompts = load_prompt_set("retention")[:6]
    settings = AnswerSettings(max_new_tokens=4, bf16=False)
    first = cache.answers(model, tokenizer, "retention", prompts, settings, select=prompts[:3])
    assert [a.prompt for a in first] == [p.prompt for p in prompts[:3]] and cache.generated == {"retention": 3}
    path = cache.path("retention", prompts, settings)
    assert len(path.read_text().splitlines()) == 3
    assert path.stat().st_mode & 0o777 == 0o600  # the answers may quote the user's chats one day: private

    asked: list[list[str]] = []
    real = answers_module.greedy_answers

    def counting(model, tokenizer, texts, settings, **kwargs):
        asked.append(list(texts))
        return real(model, tokenizer, texts, settings, **kwargs)

    monkeypatch.setattr(answers_module, "greedy_answers", counting)
    again = cache.answers(model, tokenizer, "retention", prompts, settings, select=prompts[:3])
    assert again == first and asked == []  # served from the cache
    more = cache.answers(model, tokenizer, "retention", prompts, settings)
    assert asked == [[p.prompt for p in prompts[3:]]] and more[:3] == first and len(more) == 6
    assert cache.generated == {"retention": 6}
    # Other settings or changed weights are other keys.
    assert cache.path("retention", prompts, AnswerSettings(5, False)) != path
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0
    try:
        assert AnswerCache.of(model, tokenizer, tmp_path).path("retention", prompts, settings) != path
    finally:
        with torch.no_grad():
            model.lm_head.weight[0, 0] -= 1.0


def test_the_fingerprint_is_remembered_by_the_files_identity(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    files = tmp_path / "model"
    files.mkdir()
    (files / "config.json").write_text("{}")
    identity = model_identity(files, "float32")
    assert AnswerCache.known(tmp_path / "cache", identity) is None  # never used: nothing to look up
    cache = AnswerCache.of(model, tokenizer, tmp_path / "cache", identity)
    assert cache.fingerprint == model_fingerprint(model, tokenizer)
    assert AnswerCache.known(tmp_path / "cache", identity) == AnswerCache(tmp_path / "cache", cache.fingerprint)
    assert model_identity(files, "bfloat16") != identity  # the fingerprint hashes the weights as loaded
    (files / "config.json").write_text('{"changed": true}')
    assert model_identity(files, "float32") != identity
    assert model_identity("HuggingFaceTB/SmolLM2-135M-Instruct", "float32") is None  # a Hub id: no files here


def test_damaged_cache_is_regenerated(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    cache = AnswerCache.of(model, tokenizer, tmp_path)
    prompts = load_prompt_set("retention")[:2]
    settings = AnswerSettings(max_new_tokens=3, bf16=False)
    path = cache.path("retention", prompts, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"prompt": "cut sh')
    answers = cache.answers(model, tokenizer, "retention", prompts, settings)
    assert [a.prompt for a in answers] == [p.prompt for p in prompts]
    assert all(json.loads(line)["prompt"] for line in path.read_text().splitlines())


def test_usable_reply_cuts_unfinished_answers_at_a_sentence() -> None:
    assert usable_reply(Answer("q", "Paris is the capital.", True)) == "Paris is the capital."
    assert usable_reply(Answer("q", "Paris is the capital. It is on the Se", False)) == "Paris is the capital."
    assert usable_reply(Answer("q", "巴黎是首都。它在塞纳", False)) == "巴黎是首都。"
    assert usable_reply(Answer("q", "no sentence ends here at all and", False)) is None
    loop = "A world of endless possibilities, " * 8
    assert usable_reply(Answer("q", loop + "end.", True)) is None


def test_first_sentences_cut_after_the_sentence_asked_for() -> None:
    text = "Cairo is the capital of Egypt. It lies on the Nile! Ask me more?"
    assert first_sentences(text, 1) == "Cairo is the capital of Egypt."
    assert first_sentences(text, 2) == "Cairo is the capital of Egypt. It lies on the Nile!"
    assert first_sentences(text, 5) == text
    assert first_sentences("开罗是埃及的首都。它在尼罗河边。", 1) == "开罗是埃及的首都。"


def test_distilled_replay_keeps_first_sentences_and_text_replay_whole_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = "Cairo is the capital of Egypt. It lies on the Nile."

    def answers(model, tokenizer, set_name, prompts, settings, *, select, progress):
        return [Answer(p.prompt, answer, True) for p in select]

    cache = AnswerCache(Path("unused"), "fingerprint")
    monkeypatch.setattr(cache, "answers", answers)
    whole = replay_for_run(None, None, 3, cache, bf16=False)
    cut = replay_for_run(None, None, 3, cache, bf16=False, sentences=DISTILLED_REPLAY_SENTENCES)
    assert [c.messages[1]["content"] for c in whole] == [answer] * 3
    assert [c.messages[1]["content"] for c in cut] == ["Cairo is the capital of Egypt."] * 3
    assert [c.messages[0] for c in cut] == [c.messages[0] for c in whole]


def test_default_replay_count_follows_the_data_within_bounds() -> None:
    assert default_replay_count(10) == 30  # many passes: three a conversation
    assert default_replay_count(54) == 108  # two passes: two a conversation
    assert default_replay_count(3) == 16
    assert default_replay_count(64) == default_replay_count(10_000) == 128


def test_replay_conversations_come_from_the_model(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    cache = AnswerCache.of(model, tokenizer, tmp_path)
    conversations = replay_conversations(model, tokenizer, 2, cache, bf16=False)
    prompts = {p.prompt for p in load_prompt_set("replay")}
    assert len(conversations) <= 2
    for conversation in conversations:
        user, assistant = conversation["messages"]
        assert user["role"] == "user" and user["content"] in prompts
        assert assistant["role"] == "assistant" and assistant["content"].strip()
    assert replay_conversations(model, tokenizer, 0, cache, bf16=False) == []


def test_replay_asks_for_more_answers_until_enough_are_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def every_other_usable(model, tokenizer, set_name, prompts, settings, *, select, progress):
        asked.append(len(select))
        return [Answer(p.prompt, "A full sentence." if i % 2 else "cut mid", i % 2 == 1) for i, p in enumerate(select)]

    cache = AnswerCache(Path("unused"), "fingerprint")
    monkeypatch.setattr(cache, "answers", every_other_usable)
    conversations = replay_conversations(None, None, 10, cache, bf16=False)
    assert len(conversations) == 10 and asked == [13, 26]
    assert [c["messages"][0]["content"] for c in conversations] == [p.prompt for p in replay_prompts()[1:20:2]]


# -- retention


def test_retention_counts_kept_facts_and_warns() -> None:
    def item(prompt: str, reply: str, expect: list[str]) -> RetentionItem:
        reference = "The capital of France is Paris." if expect else "A long answer about volcanoes."
        return RetentionItem(
            prompt, reference, reply, rouge_l(reference, reply), expect,
            contains_answer(reference, expect) if expect else None,
            contains_answer(reply, expect) if expect else None,
        )

    kept = item("What is the capital of France?", "The capital of France is Paris.", ["Paris"])
    lost = item("What is the capital of France?", "Quenthal is the capital of the French region.", ["Paris"])
    other = item("What is a volcano?", "A long answer about volcanoes.", [])
    good = RetentionResult([kept] * 9 + [other], perplexity=2.0, base_perplexity=1.9)
    assert good.retention == 1.0 and good.facts_total == 9 and good.warning() is None
    bad = RetentionResult([kept] * 8 + [lost] * 2 + [other], perplexity=5.0)
    assert bad.facts_kept == 8 and bad.retention == 0.8
    warning = bad.warning()
    assert warning and "80%" in warning and "Quenthal" in warning and "--replay" in warning
    assert lost.rouge_l < 1 and other.rouge_l == 1.0
    assert bad.substance == sum(i.rouge_l >= ROUGE_THRESHOLD for i in bad.items) / 11
    assert bad.metrics()["facts_total"] == 10 and "items" in bad.as_dict()
    section = report_section(bad, warning)
    assert "8 of 10 (80%)" in section and "**Warning:**" in section and "| facts lost |" in section


def test_unchanged_model_retains_everything(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    cache = AnswerCache.of(model, tokenizer, tmp_path)
    assert not baseline_cached(cache, bf16=False)
    baseline = measure_baseline(model, tokenizer, cache, bf16=False)
    assert len(baseline.references) == len(baseline.prompts) == len(load_prompt_set("retention"))
    result = evaluate_retention(model, tokenizer, baseline, bf16=False)
    assert [i.reply for i in result.items] == [a.reply for a in baseline.references]
    assert result.perplexity == pytest.approx(baseline.perplexity)
    assert result.mean_rouge_l == 1.0 and result.retention == 1.0 and result.substance == 1.0
    assert 1.0 <= result.perplexity < float("inf")
    # The base model's side is measured once: answers and perplexity come from the cache the next time.
    assert not baseline.cached and baseline_cached(cache, bf16=False)
    again = measure_baseline(model, tokenizer, AnswerCache.of(model, tokenizer, tmp_path), bf16=False)
    assert again.cached and again.perplexity == baseline.perplexity and again.references == baseline.references


# -- recall


def test_probe_file_round_trip_and_errors(tmp_path: Path) -> None:
    probes = [Probe("Who invented the glimmerphone?", ("Vantosk",)), Probe("Undo a commit?", reference="git revert")]
    path = write_probes(tmp_path / "probes.jsonl", probes)
    assert read_probes(path) == probes
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "expect": ["a"]}\n{"question": "no answer"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a probe needs"):
        read_probes(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: bad JSON"):
        read_probes(bad)


def test_probes_from_corrections_use_the_correction_as_reference() -> None:
    probes = probes_from_corrections([("Capital of Veloria?", "Quenthal is the capital of Veloria."), (" ", "x")])
    assert probes == [Probe("Capital of Veloria?", reference="Quenthal is the capital of Veloria.")]
    assert probes[0].passes("The capital of Veloria is Quenthal, a port.")
    assert not probes[0].passes("Veloria has no capital city at all, it is a desert.")


def test_evaluate_recall_scores_each_probe(tiny) -> None:
    model, tokenizer = tiny
    probes = [Probe("hello", ("zzzz-never",)), Probe("hello world", reference="anything")]
    result = evaluate_recall(model, tokenizer, probes, bf16=False, max_new_tokens=4)
    assert [r.question for r in result.results] == ["hello", "hello world"]
    assert result.results[0].passed is False and result.metrics()["probes"] == 2


# -- the automatic schedule


def test_auto_schedule_gives_small_datasets_more_epochs_and_large_ones_smaller_steps() -> None:
    small, medium, large, larger = (auto_schedule(n, "lora") for n in (20, 40, 60, 600))
    assert small[0] > medium[0] == large[0] == larger[0] == 2
    # What one pass would take is spread over two from ~50 conversations; more data, a smaller step still.
    assert small[1] == medium[1] == 2 * large[1] > 2 * larger[1] > 0
    assert preference_epochs(60) == preference_epochs(600) == 1  # DPO's rates were measured over one pass
    assert all(reason for _, _, reason in (small, medium, large, larger))
    assert "20 conversations" in small[2]
    assert auto_schedule(20, "full")[1] < auto_schedule(20, "lora")[1]
    with pytest.raises(ValueError):
        auto_schedule(20, "qlora")


# -- wired into `python -m trainer`


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-run") / "model")


def test_eval_probes_command(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    probes = write_probes(tmp_path / "probes.jsonl", [Probe("hello", ("zzzz-never",)), Probe("world", ("nope",))])
    status = trainer_main(
        ["eval", "--probes", str(probes), "--model", str(tiny_dir), "--home", str(tmp_path / "home"),
         "--max-new-tokens", "4", "--progress", "json"]
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0
    (recall,) = [e for e in events if e["event"] == "recall"]
    assert recall["probes"] == 2 and recall["recalled"] == 0
    assert trainer_main(["eval", "--model", str(tiny_dir), "--progress", "json"]) == 1
    assert "nothing to evaluate" in capsys.readouterr().out


def test_training_mixes_in_replay_and_reports_retention(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real model's own answers are tested in test_teach_fact.py; distilled replay keeps the first sentence
    can_replay_answers(monkeypatch, "hello world. goodbye world.")
    data = write_jsonl(tmp_path / "chats.jsonl", chat_lines(12))
    config = SFTConfig(
        data=str(data), model=str(tiny_dir), out=str(tmp_path / "run"), home=str(tmp_path / "home"), threads=1,
        progress="none", max_steps=2, eval_samples=1, max_new_tokens=4, replay=3,
    )
    reporter = ProgressReporter("none")
    run_dir = run_sft(config, reporter)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    replayed = [json.loads(line) for line in (run_dir / "replay.jsonl").read_text().splitlines()]
    assert metrics["replay"]["conversations"] == len(replayed) == 3
    assert replayed[0]["messages"][1] == {"role": "assistant", "content": "hello world."}
    assert metrics["data"]["train_conversations"] == 12 - metrics["data"]["val_conversations"] + 3
    assert metrics["schedule"]["automatic"] == ["epochs", "lr"] and metrics["schedule"]["user_conversations"] == 12 - metrics["data"]["val_conversations"]
    assert metrics["retention"]["prompts"] == len(load_prompt_set("retention"))
    assert "## Retention" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "retention.json").read_text())["items"]
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    (done,) = [e for e in events if e["event"] == "done"]
    assert done["metrics"]["retention"] == metrics["retention"]
    # The model is saved and loadable before retention is checked; the run ends after it.
    order = [e["event"] for e in events if e["event"] in ("ready", "retention", "done")]
    assert order == ["ready", "retention", "done"] and (run_dir / "COMPLETE").is_file()

    off = dataclasses.replace(config, out=str(tmp_path / "off"), no_replay=True, no_eval=True)
    metrics = json.loads((run_sft(off, reporter) / "metrics.json").read_text())
    assert metrics["replay"]["conversations"] == 0 and metrics["retention"] is None
