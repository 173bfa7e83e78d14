"""LocalLM: the embedded SmolLM2-135M GGUF run in-process by llama.cpp, as a dspy.BaseLM.

The model is tiny and weak: these tests check the contract (shapes, types, usage, locking,
errors), never whether an answer is right.
"""

# ruff: noqa: I001  (offline defaults first: before litellm is imported)
from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()

import asyncio
import threading
from typing import Literal

import pydantic
import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'local')")

import dspy

from rlmpipe.lm.local import LocalLM, LocalModelMissing, default_model_path

pytestmark = [
    pytest.mark.local_model,
    # DSPy 3.4 deprecates BaseLM.forward() subclasses (for 3.5); LocalLM is one on purpose.
    pytest.mark.filterwarnings("ignore:Implementing custom LMs through BaseLM.forward:DeprecationWarning"),
]

N_CTX = 2048


@pytest.fixture(scope="module")
def lm():
    try:
        default_model_path()
    except LocalModelMissing as exc:
        pytest.skip(f"embedded model not installed: {exc}")
    model = LocalLM(n_ctx=N_CTX, max_tokens=256)
    model.load()
    return model


@pytest.fixture(autouse=True)
def _fresh_history(lm):
    lm.history.clear()
    yield


def _raw_usage(entry):
    """The usage block of the response llama.cpp returned, as recorded in the LM's history."""
    return dict(entry["response"]["usage"])


# ---------------------------------------------------------------- basics


def test_identity_and_chat_template(lm):
    assert lm.model == "local/SmolLM2-135M-Instruct"
    assert isinstance(lm, dspy.BaseLM)
    llama = lm.load()
    assert llama is lm.load(), "the model is loaded once and reused"
    assert llama.chat_format == "chat_template.default"  # the template from the GGUF metadata
    prompt = llama.detokenize(lm.render_prompt([{"role": "user", "content": "Hi"}]), special=True).decode()
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


def test_predict_question_answer_usage_and_history(lm):
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), track_usage=True):
        prediction = dspy.Predict("question -> answer")(question="What is the capital of France?")
    assert isinstance(prediction.answer, str) and prediction.answer.strip()

    assert len(lm.history) == 1
    entry = lm.history[0]
    assert entry["model"] == lm.model and entry["messages"][-1]["role"] == "user"
    reported = _raw_usage(entry)
    assert reported["prompt_tokens"] > 0 and reported["completion_tokens"] > 0
    assert reported["total_tokens"] == reported["prompt_tokens"] + reported["completion_tokens"]
    # DSPy's usage tracker saw exactly what llama.cpp reported ...
    usage = prediction.get_lm_usage()[lm.model]
    assert {key: usage[key] for key in reported} == reported
    assert entry["usage"] == reported
    # ... and the prompt count is the chat-templated prompt's token count
    assert reported["prompt_tokens"] == lm.count_prompt_tokens(entry["messages"])
    assert entry["response"]["choices"][0]["finish_reason"] == "stop"


def test_direct_call_respects_per_call_options(lm):
    [text] = lm("Write a long story about a dragon.", max_tokens=8)
    entry = lm.history[-1]
    assert entry["response"]["choices"][0]["finish_reason"] == "length"
    assert entry["usage"]["completion_tokens"] == 8
    assert text

    [stopped] = lm("Tell me about the weather today.", max_tokens=40, stop=[" "])
    assert " " not in stopped.strip()
    assert lm.history[-1]["response"]["choices"][0]["finish_reason"] == "stop"
    assert lm.history[-1]["usage"]["completion_tokens"] < 40

    with pytest.raises(ValueError, match="n=2 is not supported"):
        lm("hello", n=2)

    assert asyncio.run(lm.acall("Say hi.", max_tokens=4))[0]


def test_sampling_is_reproducible_and_rollout_id_varies_it(lm):
    first = lm("Write a sentence about cats.", temperature=1.0, max_tokens=16)
    assert lm("Write a sentence about cats.", temperature=1.0, max_tokens=16) == first  # seed 0 each call
    other = lm.copy(rollout_id=1)("Write a sentence about cats.", temperature=1.0, max_tokens=16)
    assert other != first


def test_default_chat_adapter_falls_back_to_json(lm):
    """The ChatAdapter's [[ ## field ## ]] format is not enforced; when the model misses it,
    DSPy retries with JSONAdapter, which is grammar-constrained here."""
    signature = dspy.Signature("text -> sentiment: Literal['positive', 'negative']", "Classify sentiment.")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = dspy.Predict(signature)(text="I love this sunny day.", config={"max_tokens": 48})
    assert prediction.sentiment in ("positive", "negative")
    assert len(lm.history) in (1, 2)
    if len(lm.history) == 2:  # the ChatAdapter attempt failed to parse, JSONAdapter answered
        assert "response_format" not in lm.history[0]["kwargs"]
        assert "response_format" in lm.history[1]["kwargs"]


# ---------------------------------------------------------------- structured output


class Item(pydantic.BaseModel):
    name: str
    quantity: int


class Purchase(pydantic.BaseModel):
    shop: str
    items: list[Item]


SIGNATURES = {
    "list[str]": dspy.Signature("text -> keywords: list[str]", "Extract the keywords."),
    "Literal": dspy.Signature(
        {"text": (str, dspy.InputField()),
         "sentiment": (Literal["positive", "negative", "neutral"], dspy.OutputField())},
        "Classify the sentiment.",
    ),
    "int": dspy.Signature("text -> count: int", "How many things are mentioned?"),
    "pydantic": dspy.Signature(
        {"text": (str, dspy.InputField()), "purchase": (Purchase, dspy.OutputField())},
        "Extract the purchase.",
    ),
}
TEXTS = [
    "I bought 3 apples and 2 bananas at the market; it was lovely.",
    "The server crashed twice last night and the team is furious.",
]


def _check_type(kind, prediction):
    if kind == "list[str]":
        assert isinstance(prediction.keywords, list)
        assert all(isinstance(word, str) for word in prediction.keywords)
    elif kind == "Literal":
        assert prediction.sentiment in ("positive", "negative", "neutral")
    elif kind == "int":
        assert isinstance(prediction.count, int) and not isinstance(prediction.count, bool)
    else:
        purchase = prediction.purchase
        assert isinstance(purchase, Purchase) and isinstance(purchase.shop, str)
        assert all(isinstance(item, Item) and isinstance(item.quantity, int) for item in purchase.items)


@pytest.mark.parametrize("text", TEXTS, ids=["fruit", "server"])
@pytest.mark.parametrize("kind", list(SIGNATURES))
def test_typed_outputs_parse_with_json_adapter(lm, kind, text):
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(SIGNATURES[kind])(text=text)
    _check_type(kind, prediction)
    [entry] = lm.history  # one call: the JSON parsed the first time
    # JSONAdapter sent the signature's schema (LocalLM declares response_format support) ...
    response_format = entry["kwargs"]["response_format"]
    schema = response_format.model_json_schema()
    assert set(schema["properties"]) == set(SIGNATURES[kind].output_fields)
    # ... and the grammar made the model finish the JSON itself, not max_tokens
    assert entry["response"]["choices"][0]["finish_reason"] == "stop"


def test_loop_guard_winds_up_runaway_lists(lm):
    """At temperature 0 this model loops in lists ("Item1", "Item2", ...); the guard closes them."""
    signature = dspy.Signature(
        {"text": (str, dspy.InputField()), "bought": (list[Item], dspy.OutputField())},
        "List the items bought.",
    )
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(signature)(text="The server crashed twice last night; the team is furious.")
    assert all(isinstance(item, Item) for item in prediction.bought)
    entry = lm.history[-1]
    assert entry["response"]["choices"][0]["finish_reason"] == "stop"
    assert entry["usage"]["completion_tokens"] < 200


def test_response_format_shapes_accepted_by_forward(lm):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for response_format in (
        {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        {"type": "json_object", "schema": schema},
    ):
        [text] = lm("Give me a number.", response_format=response_format, max_tokens=24)
        assert isinstance(pydantic.TypeAdapter(dict[str, int]).validate_json(text)["n"], int)
    [text] = lm("Give me a JSON object.", response_format={"type": "json_object"}, max_tokens=48)
    assert text.lstrip().startswith("{")


# ---------------------------------------------------------------- threads, copies, limits


QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is 2 + 2?", "Who wrote Hamlet?"]


def test_concurrent_calls_are_serialised_and_deterministic(lm):
    llama = lm.load()
    original = llama.create_chat_completion
    active, peak, guard = [0], [0], threading.Lock()

    def counting(*args, **kwargs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return original(*args, **kwargs)
        finally:
            with guard:
                active[0] -= 1

    sequential = [lm(question, max_tokens=24)[0] for question in QUESTIONS]

    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(QUESTIONS))

    def worker(index):
        try:
            start.wait()
            results[index] = lm(QUESTIONS[index], max_tokens=24)[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    llama.create_chat_completion = counting
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(QUESTIONS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        del llama.create_chat_completion  # back to the class method
    assert not errors, errors
    assert peak[0] == 1, "llama.cpp was entered by two threads at once"
    assert [results[i] for i in range(len(QUESTIONS))] == sequential
    assert len(lm.history) == 2 * len(QUESTIONS)


def test_dspy_parallel_and_copies_share_the_model(lm):
    copy = lm.copy(temperature=0.0)
    assert copy.load() is lm.load() and copy.history == []
    predict = dspy.Predict("question -> answer")
    examples = [dspy.Example(question=q).with_inputs("question") for q in QUESTIONS[:2]]
    with dspy.context(lm=copy, adapter=dspy.JSONAdapter()):
        results = dspy.Parallel(num_threads=2, disable_progress_bar=True)([(predict, e) for e in examples])
    assert all(isinstance(r.answer, str) for r in results)
    assert len(copy.history) == 2 and lm.history == []


def test_prompt_longer_than_context_is_a_clear_error(lm):
    prompt = "word " * (N_CTX + 100)
    with pytest.raises(ValueError, match=rf"prompt is \d+ tokens .* n_ctx={N_CTX}") as caught:
        lm(prompt)
    n_tokens = int(str(caught.value).split("prompt is ")[1].split(" ")[0])
    assert n_tokens == lm.count_prompt_tokens(prompt) > N_CTX
    # the same error reaches a DSPy program's caller, and the model still works afterwards
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), pytest.raises(ValueError, match="context window"):
        dspy.Predict("question -> answer")(question=prompt)
    assert lm("Say hi.", max_tokens=4)[0]


def test_state_round_trip(lm):
    state = lm.dump_state()
    assert state["n_ctx"] == N_CTX and state["model_path"] is None
    again = dspy.BaseLM.load_state(state, allow_custom_lm_class=True)
    assert isinstance(again, LocalLM) and again.model == lm.model and again.kwargs == lm.kwargs
